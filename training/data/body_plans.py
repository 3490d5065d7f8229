"""Body plans: skeletons with named joints, joint roles and limits, and the implicit parts of the body.

A body plan is built in a rest pose (+Y up, facing +Z, the creature's left side at +X, feet on
y = 0) that keeps limbs apart, like an artist's bind pose. It holds everything the later steps need:

- the joint tree (positions, parents, readable names such as ``spine_02`` or ``leg_front_l_03``);
- per joint a *role* (what the joint does: ``leg_root``, ``leg_mid``, ``tentacle``, ...), the
  *chain* it belongs to (``leg_front_l``), its index along the chain and its side, and a hinge
  axis, from which :func:`joint_axes` makes the flex / splay / twist axes and :func:`joint_limits`
  the range of each;
- the surface parts (tapered capsules along bones, ellipsoids for bodies and heads, thick triangles
  for wings, fins and membranes), each owned by the joints whose bones it follows.

Nine families (:data:`FAMILIES`) each draw their proportions, joint counts and sub-variants from
the random generator; :func:`mutate` adds, removes or rescales limbs. Positions of the left side
are mirrored to the right, and so are hinge axes (as pseudo-vectors), so the same joint angles on
both sides give mirror-symmetric poses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from backend.skeleton import tree_distances

from .surface import Capsule, Ellipsoid, Primitive, Slab, SurfaceConfig, prepare_parts

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = (
    "humanoid", "quadruped", "bird", "insect", "spider", "snake", "fish", "tentacled", "dragon",
)

# Joint limits per role in degrees, for the (flex, splay, twist) channels. Positive flex is the
# joint's natural bending direction (a knee folding, a finger curling, a wing rising).
ROLE_LIMITS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "root": ((-180, 180), (-180, 180), (-180, 180)),
    "spine": ((-25, 25), (-25, 25), (-15, 15)),
    "neck": ((-45, 45), (-45, 45), (-25, 25)),
    "head": ((-40, 40), (-45, 45), (-25, 25)),
    "jaw": ((0, 35), (-4, 4), (-4, 4)),
    "tail": ((-45, 45), (-50, 50), (-20, 20)),
    "abdomen": ((-20, 20), (-20, 20), (-10, 10)),
    "body": ((-35, 35), (-45, 45), (-12, 12)),
    "trunk": ((-50, 50), (-50, 50), (-20, 20)),
    "leg_root": ((-45, 80), (-20, 40), (-25, 25)),
    "leg_mid": ((0, 125), (-5, 5), (-8, 8)),
    "leg_low": ((-40, 90), (-12, 12), (-10, 10)),
    "leg_foot": ((-45, 50), (-10, 10), (-5, 5)),
    "sprawl_root": ((-40, 40), (-20, 20), (-15, 15)),
    "sprawl_lift": ((-35, 55), (-15, 15), (-15, 15)),
    "sprawl_knee": ((-30, 60), (-10, 10), (-10, 10)),
    "sprawl_foot": ((-30, 50), (-10, 10), (-10, 10)),
    "clavicle": ((-15, 15), (-12, 20), (-10, 10)),
    "shoulder": ((-45, 100), (-30, 85), (-60, 60)),
    "elbow": ((0, 140), (-5, 5), (-70, 70)),
    "wrist": ((-60, 70), (-25, 25), (-30, 30)),
    "finger": ((-10, 90), (-12, 12), (-5, 5)),
    "wing_root": ((-60, 70), (-35, 35), (-35, 35)),
    "wing_mid": ((-10, 100), (-15, 15), (-15, 15)),
    "wing_low": ((-10, 90), (-15, 15), (-20, 20)),
    "wing_finger": ((-30, 40), (-20, 20), (-10, 10)),
    "tentacle": ((-55, 55), (-50, 50), (-20, 20)),
    "ear": ((-45, 45), (-35, 35), (-20, 20)),
    "antenna": ((-45, 45), (-45, 45), (-15, 15)),
    "fin": ((-45, 45), (-30, 30), (-20, 20)),
    "mandible": ((-30, 30), (-10, 10), (-5, 5)),
    "tip": ((0, 0), (0, 0), (0, 0)),
}

X, Y, Z = np.eye(3)
MAX_CHAIN_BONES = 12  # longest unbranched chain of bones
WEB_ROLES = {"tentacle", "finger", "sprawl_root"}  # siblings of these roles may meet at their base


class BodyPlanError(RuntimeError):
    """Raised when a body plan cannot be built within its constraints."""


@dataclass
class BodyPlan:
    """A creature's skeleton, joint semantics and surface parts in the rest pose.

    Attributes:
        family: one of :data:`FAMILIES`.
        variant: the sub-kind drawn inside the family (``"canine"``, ``"starfish"``, ...).
        names: ``J`` unique readable joint names.
        parents: int32 ``[J]``; ``-1`` for the single root; parents precede children.
        joints: float32 ``[J, 3]`` rest joint positions.
        roles: ``J`` role names (keys of :data:`ROLE_LIMITS`); leaves have role ``"tip"``.
        chains: ``J`` chain names (``"leg_front_l"``; the trunk is ``"spine"``).
        segs: int32 ``[J]`` index of each joint along its chain.
        sides: int8 ``[J]`` +1 left (+X), -1 right, 0 centre.
        hinges: float32 ``[J, 3]`` flexion-axis hint per joint (world, rest pose).
        parts: surface primitives, built in this order (trunk first).
        locomotion: how the creature moves: ``"walk"``, ``"fly"``, ``"swim"``, ``"slither"``.
        mutations: descriptions of the random mutations applied.
    """

    family: str
    variant: str
    names: list[str]
    parents: np.ndarray
    joints: np.ndarray
    roles: list[str]
    chains: list[str]
    segs: np.ndarray
    sides: np.ndarray
    hinges: np.ndarray
    parts: list[Primitive]
    locomotion: str = "walk"
    mutations: list[str] = field(default_factory=list)

    @property
    def n_joints(self) -> int:
        return int(len(self.parents))

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(self.n_joints)]
        for j, p in enumerate(self.parents):
            if p >= 0:
                kids[int(p)].append(j)
        return kids

    def extent(self) -> float:
        """Longest side of the joints' bounding box."""
        return float((self.joints.max(axis=0) - self.joints.min(axis=0)).max())

    def scaled(self, s: float) -> "BodyPlan":
        """The same plan with every length multiplied by ``s``."""
        return replace(self, joints=(self.joints * s).astype(np.float32),
                       parts=[p.scaled(s) for p in self.parts])


# --------------------------------------------------------------------------------------------
# Small geometry helpers
# --------------------------------------------------------------------------------------------


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 1e-12 else v


def rotation(axis, angle_rad: float) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` about ``axis`` by ``angle_rad`` (right-hand rule)."""
    a = unit(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def frame_along(direction, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Rotation whose columns are (side, up', direction): an ellipsoid frame with z along ``direction``."""
    d = unit(direction)
    u = np.asarray(up, dtype=np.float64)
    u = u - (u @ d) * d
    if np.linalg.norm(u) < 1e-6:
        u = X - (X @ d) * d
    u = unit(u)
    return np.stack([np.cross(u, d), u, d], axis=1)


def mirror_point(p, side: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return p if side >= 0 else p * np.array([-1.0, 1.0, 1.0])


def mirror_axis(a, side: int) -> np.ndarray:
    """Mirror a rotation axis (a pseudo-vector) across the x = 0 plane for the right side."""
    a = np.asarray(a, dtype=np.float64)
    return a if side >= 0 else a * np.array([1.0, -1.0, -1.0])


def side_letter(side: int) -> str:
    return "l" if side > 0 else "r"


# --------------------------------------------------------------------------------------------
# Builder
# --------------------------------------------------------------------------------------------


class _Builder:
    """Collects joints and parts; limbs are described on the left side and mirrored."""

    def __init__(self, family: str, variant: str):
        self.family, self.variant = family, variant
        self.names: list[str] = []
        self.parents: list[int] = []
        self.pos: list[np.ndarray] = []
        self.roles: list[str] = []
        self.chains: list[str] = []
        self.segs: list[int] = []
        self.sides: list[int] = []
        self.hinges: list[np.ndarray] = []
        self.parts: list[Primitive] = []

    def add(self, name: str, parent: int, pos, role: str, chain: str, seg: int = 0, side: int = 0,
            hinge=X) -> int:
        if name in self.names:
            raise BodyPlanError(f"duplicate joint name {name!r}")
        if role not in ROLE_LIMITS:
            raise BodyPlanError(f"unknown joint role {role!r}")
        self.names.append(name)
        self.parents.append(parent)
        self.pos.append(np.asarray(pos, dtype=np.float64))
        self.roles.append(role)
        self.chains.append(chain)
        self.segs.append(seg)
        self.sides.append(side)
        self.hinges.append(unit(hinge))
        return len(self.names) - 1

    def capsule(self, j0: int, j1: int, r0: float, r1: float, blend: float | None = None,
                owners: tuple[int, ...] | None = None) -> None:
        blend = 0.45 * min(r0, r1) if blend is None else blend
        self.parts.append(Capsule(self.pos[j0].copy(), self.pos[j1].copy(), float(r0), float(r1),
                                  owners or (j0,), float(blend)))

    def ellipsoid(self, center, radii, owners, rot: np.ndarray | None = None, blend: float | None = None) -> None:
        radii = np.asarray(radii, dtype=np.float64)
        blend = 0.3 * float(radii.min()) if blend is None else blend
        self.parts.append(Ellipsoid(np.asarray(center, dtype=np.float64), radii,
                                    np.eye(3) if rot is None else rot, tuple(owners), float(blend)))

    def slab(self, a, b, c, thickness: float, owners, blend: float | None = None) -> None:
        blend = 1.0 * thickness if blend is None else blend
        self.parts.append(Slab(np.stack([np.asarray(a, float), np.asarray(b, float), np.asarray(c, float)]),
                               float(thickness), tuple(owners), float(blend)))

    def chain(self, parent: int, chain: str, points, radii, roles, hinges, side: int = 0,
              names: list[str] | None = None, surface: bool = True, first_blend: float | None = None,
              first_seg: int = 0) -> list[int]:
        """Add a chain of joints at ``points`` (the last one a ``tip`` leaf) with capsules between them.

        ``roles``/``hinges`` list one entry per joint except the tip (a single value is repeated).
        """
        points = [np.asarray(p, dtype=np.float64) for p in points]
        n = len(points)
        if isinstance(roles, str):
            roles = [roles] * (n - 1)
        if np.ndim(hinges) == 1:
            hinges = [hinges] * (n - 1)
        roles = list(roles) + ["tip"]
        hinges = list(hinges) + [hinges[-1]]
        idx: list[int] = []
        for i, p in enumerate(points):
            name = names[i] if names else f"{chain}_{i + 1:02d}"
            j = self.add(name, parent if i == 0 else idx[-1], p, roles[i], chain, first_seg + i, side, hinges[i])
            if surface and i > 0:
                blend = first_blend if (i == 1 and first_blend is not None) else None
                self.capsule(idx[-1], j, radii[i - 1], radii[i], blend=blend)
            idx.append(j)
        return idx

    def build(self, locomotion: str) -> BodyPlan:
        return BodyPlan(
            family=self.family, variant=self.variant, names=list(self.names),
            parents=np.asarray(self.parents, dtype=np.int32),
            joints=np.asarray(self.pos, dtype=np.float32).reshape(-1, 3),
            roles=list(self.roles), chains=list(self.chains),
            segs=np.asarray(self.segs, dtype=np.int32), sides=np.asarray(self.sides, dtype=np.int8),
            hinges=np.asarray(self.hinges, dtype=np.float32).reshape(-1, 3),
            parts=list(self.parts), locomotion=locomotion)


def _polyline(start, directions, lengths) -> list[np.ndarray]:
    """Points from ``start`` following unit ``directions`` for ``lengths``."""
    pts = [np.asarray(start, dtype=np.float64)]
    for d, length in zip(directions, lengths):
        pts.append(pts[-1] + unit(d) * length)
    return pts


def _curve(start, direction, length: float, n: int, bend_axis=X, bend_deg: float = 0.0) -> list[np.ndarray]:
    """``n + 1`` points along a gently bending curve of total ``length`` (``bend_deg`` in total)."""
    d = unit(direction)
    step = length / n
    r = rotation(bend_axis, np.radians(bend_deg) / max(n, 1))
    pts = [np.asarray(start, dtype=np.float64)]
    for _ in range(n):
        pts.append(pts[-1] + d * step)
        d = r @ d
    return pts


def _taper(r0: float, r1: float, n: int, power: float = 1.0) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n) ** power
    return r0 + (r1 - r0) * t


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------


def _humanoid(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    cartoon = rng.uniform(0.0, 1.0)
    if variant is not None:  # keep a redrawn plan in its variant
        cartoon = rng.uniform(0.6, 1.0) if variant == "cartoon" else rng.uniform(0.0, 0.6)
    bulk = rng.uniform(0.8, 1.35)
    variant = "cartoon" if cartoon > 0.6 else "human"
    b = _Builder("humanoid", variant)
    head_h = 0.12 + 0.10 * cartoon
    leg_len = (0.48 - 0.10 * cartoon) * rng.uniform(0.93, 1.07)
    neck_len = rng.uniform(0.025, 0.05)
    torso_len = 1.0 - head_h - leg_len - neck_len
    r_thigh, r_knee, r_ankle = 0.058 * bulk, 0.04 * bulk, 0.028 * bulk
    hip_x = r_thigh + 0.022 + rng.uniform(0.0, 0.03)
    chest_w = max(rng.uniform(0.13, 0.17) * bulk, hip_x + 0.02)
    depth = rng.uniform(0.075, 0.1) * bulk
    y_pel = leg_len + 0.03
    y_sh = leg_len + torso_len

    n_spine = int(rng.integers(1, 5))
    n_neck = int(rng.integers(1, 3))
    with_tail = rng.random() < 0.12
    n_fingers = int(rng.choice([0, 2, 3, 4], p=[0.4, 0.15, 0.2, 0.25]))  # besides the thumb
    n_phal = int(rng.integers(2, 4))
    base = 1 + n_spine + n_neck + 2 + 8 + 10 + (4 if with_tail else 0)
    while n_fingers and base + 2 * (n_fingers + 1) * (n_phal + 1) > max_joints:
        if n_phal > 2:
            n_phal -= 1
        else:
            n_fingers -= 1
    if n_fingers == 0 and base + 2 > max_joints:
        with_tail = False

    pelvis = b.add("pelvis", -1, (0, y_pel, 0), "root", "spine", hinge=X)
    spine = [pelvis]
    for k in range(1, n_spine + 1):
        y = y_pel + (y_sh - 0.03 - y_pel) * k / n_spine
        spine.append(b.add(f"spine_{k:02d}", spine[-1], (0, y, 0.004 * k), "spine", "spine", k, 0, X))
    chest = spine[-1]
    neck_pts = [(0, y_sh + 0.005 + neck_len * i / n_neck, 0.01) for i in range(n_neck)]
    prev = chest
    necks = []
    for i, p in enumerate(neck_pts):
        prev = b.add(f"neck_{i + 1:02d}", prev, p, "neck", "spine", i, 0, X)
        necks.append(prev)
    head = b.add("head", prev, (0, y_sh + neck_len, 0.012), "head", "spine", n_neck, 0, X)
    b.add("head_end", head, (0, 1.0, 0.02), "tip", "spine", n_neck + 1, 0, X)
    trunk = spine
    # torso: pelvis, belly and chest ellipsoids
    b.ellipsoid((0, y_pel + 0.01, 0), (hip_x + r_thigh * 0.85, 0.085, depth), trunk)
    b.ellipsoid((0, y_pel + torso_len * 0.33, 0.006),
                ((chest_w + hip_x + r_thigh) * 0.45, torso_len * 0.3, depth * rng.uniform(0.95, 1.25)), trunk)
    b.ellipsoid((0, y_sh - torso_len * 0.3, 0.008), (chest_w, torso_len * 0.34, depth * 1.1), trunk)
    r_neck = rng.uniform(0.032, 0.045) * bulk
    for a_, b_ in zip(necks, necks[1:] + [head]):
        b.capsule(a_, b_, r_neck, r_neck * 0.97, blend=0.02)
    chest_part = 2  # parts so far: pelvis, belly and chest ellipsoids, then the neck
    head_w = head_h * rng.uniform(0.36, 0.46)
    b.ellipsoid((0, y_sh + neck_len + head_h * 0.5, 0.02), (head_w, head_h * 0.52, head_h * 0.48), (head,),
                blend=0.02)
    if cartoon > 0.75 and rng.random() < 0.5:  # a snout or big nose
        b.ellipsoid((0, y_sh + neck_len + head_h * 0.38, 0.02 + head_h * 0.45),
                    (head_w * 0.35, head_h * 0.2, head_h * 0.25), (head,), blend=0.015)

    # arms (T-pose to A-pose)
    down = np.radians(rng.uniform(0.0, 40.0))
    l_ua = rng.uniform(0.16, 0.19) * (1.0 - 0.12 * cartoon)
    l_fa = l_ua * rng.uniform(0.82, 0.95)
    palm_len = rng.uniform(0.055, 0.07)
    r_sh, r_el, r_wr = 0.042 * bulk, 0.032 * bulk, 0.026 * bulk
    r_f = 0.0105
    gap_f = 0.017
    for s in (1, -1):
        L = side_letter(s)
        rot = rotation(Z, -down * s)  # lowers the arm on both sides
        d = rot @ (X * s)
        sh = mirror_point((chest_w * 0.9, y_sh - 0.025, 0), s)
        clav = b.add(f"clavicle_{L}", chest, mirror_point((0.025, y_sh - 0.03, 0.01), s), "clavicle",
                     f"arm_{L}", 0, s, mirror_axis(Z, s))
        b.parts[chest_part].owners = b.parts[chest_part].owners + (clav,)  # the shoulder's flesh
        ua = b.add(f"upperarm_{L}", clav, sh, "shoulder", f"arm_{L}", 1, s, rot @ mirror_axis(-Y, s))
        fa = b.add(f"forearm_{L}", ua, sh + d * l_ua, "elbow", f"arm_{L}", 2, s, rot @ mirror_axis(-Y, s))
        wrist = sh + d * (l_ua + l_fa)
        hand = b.add(f"hand_{L}", fa, wrist, "wrist", f"arm_{L}", 3, s, mirror_axis(-Z, s))
        b.capsule(ua, fa, r_sh, r_el, blend=0.03)
        b.capsule(fa, hand, r_el, r_wr)
        palm_w = max(r_wr * 1.2, (n_fingers - 1) * (2 * r_f + gap_f) / 2 + r_f * 1.2) if n_fingers else r_wr * 1.3
        b.ellipsoid(wrist + d * palm_len * 0.5, (r_wr * 0.85, palm_w, palm_len * 0.55), (hand,),
                    rot=_palm_rot(d, rot), blend=0.012)
        if n_fingers == 0:
            b.add(f"hand_end_{L}", hand, wrist + d * palm_len * 1.6, "tip", f"arm_{L}", 4, s, mirror_axis(-Z, s))
            b.ellipsoid(wrist + d * palm_len * 1.15, (r_wr * 0.8, palm_w * 0.95, palm_len * 0.5), (hand,),
                        rot=_palm_rot(d, rot), blend=0.01)
            continue
        names = ["index", "middle", "ring", "pinky"][:n_fingers] if n_fingers <= 4 else []
        across = rot @ Z  # fingers spread along the palm's width (world +Z at T-pose)
        f_len = palm_len * rng.uniform(0.75, 1.05)
        for i, nm in enumerate(names):
            off = (i - (n_fingers - 1) / 2) * (2 * r_f + gap_f)
            start = wrist + d * palm_len * 0.95 + across * (-off)
            fdir = unit(d + across * (-off) * 1.2)
            pts = _polyline(start, [fdir] * n_phal, [f_len / n_phal] * n_phal)
            b.chain(hand, f"finger_{nm}_{L}", pts, _taper(r_f * 1.1, r_f * 0.85, n_phal + 1),
                    "finger", mirror_axis(-Z, s), s, first_blend=0.008)
        tstart = wrist + d * palm_len * 0.25 + across * (palm_w + r_f * 0.6)
        tdir = unit(d * 0.55 + across * 0.85 + rot @ (-Y) * 0.1)
        pts = _polyline(tstart, [tdir] * n_phal, [f_len * 0.8 / n_phal] * n_phal)
        b.chain(hand, f"finger_thumb_{L}", pts, _taper(r_f * 1.2, r_f * 0.9, n_phal + 1), "finger",
                mirror_axis(-Y, s), s, first_blend=0.01)

    # legs
    spread = rng.uniform(0.0, 0.05)
    foot_len = rng.uniform(0.13, 0.16) * (1.0 + 0.3 * cartoon)
    for s in (1, -1):
        L = side_letter(s)
        hip = mirror_point((hip_x, leg_len, 0.0), s)
        knee = mirror_point((hip_x + spread * 0.5, leg_len * 0.52, 0.015), s)
        ankle = mirror_point((hip_x + spread, 0.06, -0.01), s)
        ball = mirror_point((hip_x + spread, 0.025, foot_len * 0.68 - 0.03), s)
        toe = mirror_point((hip_x + spread, 0.022, foot_len - 0.03), s)
        th = b.add(f"thigh_{L}", pelvis, hip, "leg_root", f"leg_{L}", 0, s, mirror_axis(-X, s))
        sh_ = b.add(f"shin_{L}", th, knee, "leg_mid", f"leg_{L}", 1, s, mirror_axis(X, s))
        ft = b.add(f"foot_{L}", sh_, ankle, "leg_low", f"leg_{L}", 2, s, mirror_axis(X, s))
        tj = b.add(f"toe_{L}", ft, ball, "leg_foot", f"leg_{L}", 3, s, mirror_axis(X, s))
        te = b.add(f"toe_end_{L}", tj, toe, "tip", f"leg_{L}", 4, s, mirror_axis(X, s))
        b.capsule(th, sh_, r_thigh, r_knee, blend=0.035)
        b.capsule(sh_, ft, r_knee, r_ankle)
        b.capsule(ft, tj, r_ankle * 1.05, r_ankle * 0.9, blend=0.015)
        b.ellipsoid((ankle + ball) / 2 - np.array([0, 0.012, 0]),
                    (r_ankle * 1.35, r_ankle * 0.9, foot_len * 0.42), (ft,), blend=0.015)
        b.capsule(tj, te, r_ankle * 0.9, r_ankle * 0.75, blend=0.01)
    if with_tail:
        start = np.array([0, y_pel - 0.02, -depth * 0.9])
        pts = _curve(start, (0, -0.3, -1), rng.uniform(0.3, 0.5), 3, X, rng.uniform(20, 60))
        b.chain(pelvis, "tail", pts, _taper(0.035 * bulk, 0.012, 4), "tail", X, 0, first_blend=0.03)
    return b.build("walk")


def _palm_rot(d: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Ellipsoid frame for a palm along ``d``: local x = thickness (palm normal), y = width, z = length."""
    normal = rot @ Y
    width = unit(np.cross(d, normal))
    return np.stack([normal, width, d], axis=1)


def _quadruped_body(b: _Builder, rng: np.random.Generator, max_joints: int, dragon: bool = False):
    """Trunk, neck, head, tail and legs of a four-legged creature; returns a dict of anchors."""
    variant = b.variant
    lb = rng.uniform(0.55, 0.9)
    if variant == "lizard":
        leg = lb * rng.uniform(0.35, 0.55)
    elif variant == "horse":
        leg = lb * rng.uniform(1.1, 1.45)
    elif variant == "elephant":
        leg = lb * rng.uniform(0.7, 0.95)
    else:
        leg = lb * rng.uniform(0.5, 1.15)
    bulk = rng.uniform(0.85, 1.3) * (1.3 if variant == "elephant" else 1.0)
    r_body = lb * rng.uniform(0.17, 0.25) * bulk
    h = leg + r_body * 0.15
    z_hip, z_sh = -lb / 2, lb / 2

    n_spine = int(rng.integers(1, 5))
    simple_legs = rng.random() < 0.2 and not dragon
    leg_joints = 3 if simple_legs else 5
    n_tail = int(rng.integers(2, 9)) if variant != "elephant" else int(rng.integers(2, 4))
    n_neck = int(rng.integers(1, 4)) if variant != "horse" else int(rng.integers(2, 5))
    if dragon:
        n_neck = int(rng.integers(2, 6))
        n_tail = int(rng.integers(4, 10))
    ears = rng.random() < (0.75 if variant != "lizard" else 0.0)
    n_ear = int(rng.integers(2, 4))
    jaw = rng.random() < (0.3 if not dragon else 0.6) and variant != "elephant"
    trunk_n = int(rng.integers(3, 6)) if variant == "elephant" else 0
    wing_cost = 2 * (3 + 3 * 2) if dragon else 0  # arm + three two-joint fingers per wing

    def count() -> int:
        return (1 + n_spine + n_neck + 2 + (2 if jaw else 0) + (2 * (n_ear + 1) if ears else 0) + (n_tail + 1)
                + 4 * leg_joints + (trunk_n + 1 if trunk_n else 0) + wing_cost)

    while count() > max_joints:
        if n_tail > 3:
            n_tail -= 1
        elif ears:
            ears = False
        elif jaw:
            jaw = False
        elif n_neck > 1:
            n_neck -= 1
        elif n_spine > 1:
            n_spine -= 1
        else:
            break

    pelvis = b.add("pelvis", -1, (0, h, z_hip), "root", "spine", hinge=X)
    spine = [pelvis]
    arch = rng.uniform(-0.05, 0.08) * lb
    for k in range(1, n_spine + 1):
        t = k / n_spine
        p = (0, h + arch * np.sin(np.pi * t) + (0.06 * lb if variant == "horse" else 0) * t, z_hip + lb * t)
        spine.append(b.add(f"spine_{k:02d}", spine[-1], p, "spine", "spine", k, 0, X))
    chest = spine[-1]
    for a_, b_ in zip(spine[:-1], spine[1:]):
        b.capsule(a_, b_, r_body * 0.92, r_body * 0.95, blend=r_body * 0.3)
    b.ellipsoid(b.pos[pelvis] + np.array([0, 0.02 * lb, -r_body * 0.15]),
                (r_body * 0.95, r_body * 1.0, r_body * 1.25), spine, blend=r_body * 0.3)
    b.ellipsoid(b.pos[chest] + np.array([0, -r_body * 0.12, -r_body * 0.25]),
                (r_body * 1.0, r_body * 1.12, r_body * 1.35), spine, blend=r_body * 0.3)

    # neck and head
    neck_ang = np.radians(rng.uniform(25, 65) if variant != "lizard" else rng.uniform(5, 25))
    neck_len = lb * (rng.uniform(0.3, 0.6) if variant != "horse" else rng.uniform(0.55, 0.8))
    if dragon:
        neck_len = lb * rng.uniform(0.5, 0.95)
    if variant == "elephant":
        neck_len = lb * 0.2
    ndir = np.array([0, np.sin(neck_ang), np.cos(neck_ang)])
    nstart = b.pos[chest] + np.array([0, r_body * 0.35, r_body * 0.55])
    r_neck = r_body * rng.uniform(0.5, 0.7)
    neck_pts = _curve(nstart, ndir, neck_len, n_neck, X, rng.uniform(-10, 25))
    prev, necks = chest, []
    for i in range(n_neck):
        prev = b.add(f"neck_{i + 1:02d}", prev, neck_pts[i], "neck", "spine", i, 0, X)
        necks.append(prev)
    head_pos = neck_pts[-1]
    head = b.add("head", prev, head_pos, "head", "spine", n_neck, 0, X)
    for i in range(n_neck):
        nxt = necks[i + 1] if i + 1 < n_neck else head
        b.capsule(necks[i], nxt, r_neck * (1 - 0.15 * i / n_neck), r_neck * (0.85 - 0.15 * i / n_neck),
                  blend=r_neck * 0.5)
    rh = r_body * rng.uniform(0.6, 0.82) * (0.8 if variant == "horse" else 1.0)
    hdir = unit(np.array([0, -rng.uniform(0.3, 0.9) if variant != "lizard" else -0.1, 1.0]))
    snout = rh * (rng.uniform(0.7, 1.6) if variant not in ("horse",) else rng.uniform(1.6, 2.3))
    cranium = head_pos + hdir * rh * 0.45 + np.array([0, rh * 0.25, 0])
    tip = cranium + hdir * (rh * 0.6 + snout)
    b.add("head_end", head, tip, "tip", "spine", n_neck + 1, 0, X)
    b.ellipsoid(cranium, (rh * 0.85, rh * 0.82, rh), (head,), rot=frame_along(hdir), blend=rh * 0.35)
    b.parts.append(Capsule(cranium, tip, rh * 0.75, rh * 0.38, (head,), rh * 0.35))
    if dragon:  # horns
        for s in (1, -1):
            base = cranium + mirror_point((rh * 0.45, rh * 0.5, -rh * 0.3), s)
            hd = unit(mirror_point((0.3, 0.6, -1.0), s))
            b.parts.append(Capsule(base, base + hd * rh * rng.uniform(1.0, 2.0), rh * 0.2, rh * 0.05,
                                   (head,), rh * 0.1))
    if jaw:
        jstart = head_pos + hdir * rh * 0.2 - np.array([0, rh * 0.25, 0])
        jtip = tip - np.array([0, rh * 0.45, 0]) - hdir * rh * 0.2
        j0 = b.add("jaw", head, jstart, "jaw", "jaw", 0, 0, X)
        j1 = b.add("jaw_end", j0, jtip, "tip", "jaw", 1, 0, X)
        b.capsule(j0, j1, rh * 0.38, rh * 0.18, blend=rh * 0.15)
    if ears:
        ear_len = rh * (rng.uniform(0.6, 1.2) if rng.random() < 0.8 else rng.uniform(1.8, 2.6))
        for s in (1, -1):
            L = side_letter(s)
            base = cranium + mirror_point((rh * 0.5, rh * 0.55, -rh * 0.25), s)
            edir = unit(mirror_point((0.45, 1.0, -0.25), s))
            pts = _curve(base, edir, ear_len, n_ear, mirror_axis(Z, s), rng.uniform(-20, 20))
            b.chain(head, f"ear_{L}", pts, _taper(rh * 0.28, rh * 0.08, n_ear + 1), "ear", mirror_axis(X, s), s,
                    first_blend=rh * 0.12)
    if trunk_n:
        pts = _curve(tip - hdir * rh * 0.2, (0, -1, 0.35), leg * 0.8, trunk_n, X, -40)
        b.chain(head, "trunk", pts, _taper(rh * 0.35, rh * 0.15, trunk_n + 1), "trunk", X, 0,
                first_blend=rh * 0.2)

    # tail
    tail_len = lb * (rng.uniform(0.25, 1.1) if not dragon else rng.uniform(1.0, 1.6))
    if variant == "elephant":
        tail_len = lb * 0.35
    tstart = b.pos[pelvis] + np.array([0, r_body * 0.35, -r_body * 1.05])
    tdir = unit((0, rng.uniform(-0.6, 0.5) if variant != "lizard" else -0.15, -1))
    pts = _curve(tstart, tdir, tail_len, n_tail, X, rng.uniform(-30, 30))
    r_tail = r_body * rng.uniform(0.25, 0.42) * (1.4 if variant == "lizard" or dragon else 1.0)
    tail = b.chain(pelvis, "tail", pts, _taper(r_tail, r_tail * 0.25, n_tail + 1), "tail", X, 0,
                   first_blend=r_body * 0.2)
    if rng.random() < 0.25 and not dragon and variant not in ("lizard", "elephant"):  # bushy tail
        for a_, b_ in zip(tail[1:-2], tail[2:-1]):
            mid = (b.pos[a_] + b.pos[b_]) / 2
            seg_len = np.linalg.norm(b.pos[b_] - b.pos[a_])
            b.ellipsoid(mid, (r_tail * 1.5, r_tail * 1.5, seg_len * 1.1), (a_,),
                        rot=frame_along(b.pos[b_] - b.pos[a_]), blend=r_tail * 0.8)

    # legs
    r_leg = r_body * rng.uniform(0.3, 0.42) * (1.5 if variant == "elephant" else 1.0)
    r_foot = r_leg * (0.45 if variant != "elephant" else 0.85)
    x_leg = max(r_body * 0.6, r_leg * 1.25 + 0.03 * lb)
    legs = {}
    for front in (True, False):
        for s in (1, -1):
            L = side_letter(s)
            name = f"leg_{'front' if front else 'back'}_{L}"
            z0 = z_sh - r_body * 0.15 if front else z_hip + r_body * 0.1
            x = x_leg
            parent = chest if front else pelvis
            if variant == "lizard":
                out = rng.uniform(0.4, 0.6) * leg if not legs else legs["_out"]
                legs["_out"] = out
                p0 = mirror_point((x * 0.8, h - r_body * 0.2, z0), s)
                p1 = p0 + mirror_point((r_body * 0.5 + out * 0.5, 0.0, 0.0), s)
                p2 = p1 + mirror_point((out * 0.5, -0.05 * leg, 0.05 * lb * (1 if front else -1)), s)
                p3 = np.array([p2[0], r_foot, p2[2]])
                p4 = p3 + mirror_point((r_foot * 0.5, 0, r_foot * 2.5 * (1 if front else 0.5)), s)
                pts = [p0, p1, p2, p3, p4] if leg_joints == 5 else [p0, p2, p3]
                roles = ["sprawl_root", "sprawl_lift", "sprawl_knee", "sprawl_foot"][:leg_joints - 1]
                hinges = [mirror_axis(-Y, s), mirror_axis(Z, s), mirror_axis(-Z, s), mirror_axis(-Z, s)]
                hinges = hinges[:leg_joints - 1]
                if leg_joints == 3:
                    roles, hinges = ["sprawl_root", "sprawl_knee"], [mirror_axis(-Y, s), mirror_axis(-Z, s)]
            else:
                if front:
                    p0 = mirror_point((x, h - r_body * 0.25, z0 + r_body * 0.2), s)
                    p1 = mirror_point((x, h - r_body * 1.25 - leg * 0.05, z0 - r_body * 0.15), s)
                    p2 = mirror_point((x, leg * 0.3, z0 - r_body * 0.05), s)
                    p3 = mirror_point((x, r_foot, z0 + r_foot * 0.3), s)
                    hinges = [mirror_axis(-X, s), mirror_axis(-X, s), mirror_axis(X, s), mirror_axis(X, s)]
                else:
                    p0 = mirror_point((x, h - r_body * 0.1, z0), s)
                    p1 = mirror_point((x, h - leg * 0.42, z0 + leg * 0.16), s)
                    hock = 0.32 if variant != "elephant" else 0.25
                    p2 = mirror_point((x, leg * hock, z0 - leg * 0.12 * (0.3 if variant == "elephant" else 1)), s)
                    p3 = mirror_point((x, r_foot, z0 - leg * 0.03), s)
                    hinges = [mirror_axis(-X, s), mirror_axis(X, s), mirror_axis(-X, s), mirror_axis(X, s)]
                p4 = p3 + np.array([0, -r_foot * 0.2, r_foot * 2.2])
                roles = ["leg_root", "leg_mid", "leg_low", "leg_foot"]
                if leg_joints == 5:
                    pts = [p0, p1, p2, p3, p4]
                else:
                    pts, roles, hinges = [p0, p1, p3], ["leg_root", "leg_mid"], [hinges[0], hinges[1]]
            radii = _taper(r_leg, r_foot, len(pts), 0.7)
            ids = b.chain(parent, name, pts, radii, roles, hinges, s, first_blend=r_leg * 0.8)
            legs[name] = ids
            if leg_joints == 5:
                b.ellipsoid((b.pos[ids[3]] + b.pos[ids[4]]) / 2 + np.array([0, -r_foot * 0.1, 0]),
                            (r_foot * 1.2, r_foot * 0.8, np.linalg.norm(b.pos[ids[4]] - b.pos[ids[3]]) * 0.75),
                            (ids[3],), rot=frame_along(b.pos[ids[4]] - b.pos[ids[3]]), blend=r_foot * 0.4)
    legs.pop("_out", None)
    return dict(pelvis=pelvis, chest=chest, head=head, r_body=r_body, lb=lb, h=h, spine=spine, z_sh=z_sh)


def _quadruped(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["canine", "horse", "lizard", "elephant", "generic"],
                                        p=[0.3, 0.15, 0.2, 0.1, 0.25]))
    b = _Builder("quadruped", variant)
    _quadruped_body(b, rng, max_joints)
    return b.build("walk")


def _dragon(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    b = _Builder("dragon", variant or str(rng.choice(["dragon", "griffin"], p=[0.75, 0.25])))
    anchors = _quadruped_body(b, rng, max_joints, dragon=True)
    r_body, lb, chest = anchors["r_body"], anchors["lb"], anchors["chest"]
    span = lb * rng.uniform(1.0, 1.7)
    n_fing = 3
    thick = 0.012 * lb
    if b.variant == "griffin":  # feathered wings
        for s in (1, -1):
            sh = b.pos[chest] + mirror_point((r_body * 0.6, r_body * 1.0, -r_body * 0.1), s)
            _feathered_wing(b, chest, s, sh, rng.uniform(15, 30), span, lb * rng.uniform(0.25, 0.35), thick,
                            r_body * 0.2, lb)
        return b.build("walk")
    for s in (1, -1):
        L = side_letter(s)
        sh = b.pos[chest] + mirror_point((r_body * 0.55, r_body * 0.8, -r_body * 0.2), s)
        rise = np.radians(rng.uniform(10, 30))
        out = mirror_point((np.cos(rise), np.sin(rise), 0.0), s)
        el = sh + out * span * 0.3 + np.array([0, 0, -0.05 * lb])
        wr = el + out * span * 0.33 + np.array([0, 0, 0.08 * lb])
        ids = b.chain(chest, f"wing_{L}", [sh, el, wr], [r_body * 0.22, r_body * 0.16, r_body * 0.1],
                      ["wing_root", "wing_mid"], [mirror_axis(Z, s), mirror_axis(Y, s)], s,
                      first_blend=r_body * 0.15)
        b.roles[ids[2]] = "wing_low"  # the wrist carries the fingers: not a leaf
        b.hinges[ids[2]] = unit(mirror_axis(Y, s))
        tips = []
        for f in range(n_fing):
            ang = np.radians(-5 - 28 * f)  # fingers fan backwards
            fd = unit(mirror_point((np.cos(ang), 0.1, np.sin(ang)), s))
            flen = span * (0.5 - 0.07 * f)
            pts = [wr + fd * flen * 0.45, wr + fd * flen]
            fid = b.chain(ids[2], f"wing_finger_{L}_{f + 1}", pts, [r_body * 0.06, r_body * 0.035],
                          "wing_finger", mirror_axis(Y, s), s)
            b.capsule(ids[2], fid[0], r_body * 0.08, r_body * 0.06, blend=r_body * 0.04)
            tips.append(fid)
        # membranes between the fingers and from the last finger back along the arm
        for f in range(n_fing - 1):
            a_, c_ = tips[f], tips[f + 1]
            b.slab(b.pos[ids[2]], b.pos[a_[1]], b.pos[c_[1]], thick, (ids[2], a_[0], c_[0]))
        last = tips[-1]
        b.slab(b.pos[ids[1]], b.pos[ids[2]], b.pos[last[1]], thick, (ids[1], ids[2], last[0]))
        b.slab(b.pos[ids[0]], b.pos[ids[1]], b.pos[last[1]], thick, (ids[0], ids[1]))
    return b.build("walk")


def _bird(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["songbird", "wader", "raptor", "penguin"], p=[0.35, 0.25, 0.3, 0.1]))
    b = _Builder("bird", variant)
    lb = rng.uniform(0.35, 0.5)
    r_body = lb * rng.uniform(0.32, 0.42)
    leg = lb * (rng.uniform(1.3, 2.2) if variant == "wader" else rng.uniform(0.5, 0.9))
    if variant == "penguin":
        leg = lb * 0.25
    h = leg + r_body * 0.55
    n_neck = int(rng.integers(2, 7)) if variant == "wader" else int(rng.integers(1, 4))
    toes = rng.random() < 0.6
    n_tail = int(rng.integers(1, 3))
    count = 2 + n_neck + 2 + 2 * 4 + 2 * (4 + (8 if toes else 1)) + n_tail + 1
    if count > max_joints:
        toes = False
    tilt = np.radians(rng.uniform(10, 35)) if variant != "penguin" else np.radians(80)
    body_dir = np.array([0, np.sin(tilt), np.cos(tilt)])
    pelvis = b.add("pelvis", -1, (0, h, 0), "root", "spine", hinge=X)
    chest = b.add("spine_01", pelvis, np.array([0, h, 0]) + body_dir * lb * 0.5, "spine", "spine", 1, 0, X)
    b.ellipsoid(np.array([0, h, 0]) + body_dir * lb * 0.18,
                (r_body * rng.uniform(0.85, 1.0), r_body, lb * 0.55 + r_body * 0.3), (pelvis, chest),
                rot=frame_along(body_dir), blend=r_body * 0.3)
    neck_len = lb * (rng.uniform(0.9, 1.6) if variant == "wader" else rng.uniform(0.25, 0.45))
    nstart = b.pos[chest] + body_dir * r_body * 0.4
    ndir = unit(np.array([0, 1.0, 0.35 if variant != "penguin" else 0.05]))
    pts = _curve(nstart, ndir, neck_len, n_neck, X, rng.uniform(-30, 40) if variant == "wader" else 10)
    prev, necks = chest, []
    for i in range(n_neck):
        prev = b.add(f"neck_{i + 1:02d}", prev, pts[i], "neck", "spine", i, 0, X)
        necks.append(prev)
    head = b.add("head", prev, pts[-1], "head", "spine", n_neck, 0, X)
    r_neck = r_body * (0.22 if variant == "wader" else 0.45)
    for i in range(n_neck):
        nxt = necks[i + 1] if i + 1 < n_neck else head
        b.capsule(necks[i], nxt, r_neck, r_neck * 0.9, blend=r_neck * 0.6)
    rh = r_body * (rng.uniform(0.4, 0.55) if variant != "wader" else 0.32)
    beak_len = rh * (rng.uniform(2.0, 4.0) if variant == "wader" else rng.uniform(0.9, 1.8))
    cranium = b.pos[head] + np.array([0, rh * 0.5, rh * 0.2])
    bdir = unit((0, -0.25 if variant != "raptor" else -0.5, 1))
    beak_tip = cranium + bdir * (rh * 0.8 + beak_len)
    b.add("head_end", head, beak_tip, "tip", "spine", n_neck + 1, 0, X)
    b.ellipsoid(cranium, (rh * 0.9, rh * 0.95, rh), (head,), blend=rh * 0.4)
    b.parts.append(Capsule(cranium + bdir * rh * 0.6, beak_tip, rh * 0.42, rh * 0.06, (head,), rh * 0.15))

    # wings spread sideways
    half_span = lb * (rng.uniform(1.3, 2.4) if variant != "penguin" else 0.7)
    chord0 = lb * rng.uniform(0.45, 0.65) * (0.6 if variant == "penguin" else 1.0)
    thick = 0.014 * lb
    for s in (1, -1):
        sh = b.pos[chest] + mirror_point((r_body * 0.7, r_body * 0.35, -r_body * 0.1), s)
        dihedral = rng.uniform(0, 20) if variant != "penguin" else -50.0
        _feathered_wing(b, chest, s, sh, dihedral, half_span, chord0, thick, r_body * 0.2, lb)

    # legs
    for s in (1, -1):
        L = side_letter(s)
        x = r_body * 0.5
        p0 = mirror_point((x, h - r_body * 0.35, 0.0), s)
        p1 = mirror_point((x, h - r_body * 0.85, lb * 0.12), s)
        p2 = mirror_point((x, leg * 0.45, -lb * 0.08), s)
        p3 = mirror_point((x, 0.02 * lb, lb * 0.02), s)
        r_shank = lb * 0.035
        ids = b.chain(pelvis, f"leg_{L}", [p0, p1, p2, p3], [r_body * 0.2, r_body * 0.18, r_shank, r_shank * 0.9],
                      ["leg_root", "leg_mid", "leg_low"], [mirror_axis(-X, s), mirror_axis(X, s), mirror_axis(-X, s)],
                      s, first_blend=r_body * 0.25)
        foot = ids[3]
        b.roles[foot] = "leg_foot"
        if toes:
            b.ellipsoid(b.pos[foot] + np.array([0, r_shank * 0.2, 0]), (r_shank * 1.3, r_shank * 0.9, r_shank * 1.5),
                        (foot,), blend=r_shank * 0.4)  # the foot pad the toes spread from
            for t, ang in enumerate((-30, 0, 30, 180)):
                a = np.radians(ang)
                td = unit(mirror_point((np.sin(a), 0, np.cos(a)), s))
                tl = lb * (0.22 if ang != 180 else 0.12)
                tp = [b.pos[foot] + td * r_shank * 0.5, b.pos[foot] + td * tl]
                b.chain(foot, f"toe_{L}_{t + 1}", tp, [r_shank * 0.7, r_shank * 0.45], "finger",
                        unit(np.cross(Y, td)), s, first_blend=r_shank * 0.3)
        else:
            end = b.add(f"leg_{L}_05", foot, b.pos[foot] + np.array([0, 0, lb * 0.18]), "tip", f"leg_{L}", 4, s, X)
            b.capsule(foot, end, r_shank * 1.1, r_shank * 0.6, blend=r_shank * 0.4)
    # tail
    tstart = b.pos[pelvis] - body_dir * lb * 0.3
    tdir = unit(-body_dir + np.array([0, -0.1, 0]))
    tl = lb * rng.uniform(0.35, 0.7)
    pts = _curve(tstart, tdir, tl, n_tail, X, 0)
    tid = b.chain(pelvis, "tail", pts, _taper(r_body * 0.3, r_body * 0.15, n_tail + 1), "tail", X, 0,
                  first_blend=r_body * 0.2)
    fan = rng.uniform(0.25, 0.6) * tl
    end = b.pos[tid[-1]]
    for s in (1, -1):
        b.slab(b.pos[tid[0]], end + mirror_point((fan, 0, 0), s), end + tdir * fan * 0.3, thick, (tid[-2],))
    return b.build("fly" if variant != "penguin" else "walk")


def _feathered_wing(b: _Builder, parent: int, s: int, shoulder: np.ndarray, dihedral_deg: float, half_span: float,
                    chord: float, thick: float, radius: float, length: float) -> list[int]:
    """A bird-like wing: shoulder, elbow, wrist and tip joints with feather slabs trailing backwards."""
    L = side_letter(s)
    dihedral = np.radians(dihedral_deg)
    out = mirror_point((np.cos(dihedral), np.sin(dihedral), 0), s)
    el = shoulder + out * half_span * 0.3 + np.array([0, 0, -0.04 * length])
    wr = el + out * half_span * 0.32 + np.array([0, 0, 0.05 * length])
    tip = wr + out * half_span * 0.38 + np.array([0, 0, -0.08 * length])
    ids = b.chain(parent, f"wing_{L}", [shoulder, el, wr, tip], _taper(radius, radius * 0.3, 4),
                  ["wing_root", "wing_mid", "wing_low"], [mirror_axis(Z, s), mirror_axis(Y, s), mirror_axis(Y, s)],
                  s, first_blend=radius * 0.75)
    chords = [chord, chord * 0.9, chord * 0.7, chord * 0.25]
    lead = [b.pos[i] for i in ids]
    trail = [p - np.array([0, 0, c]) for p, c in zip(lead, chords)]
    for k in range(3):
        b.slab(lead[k], lead[k + 1], trail[k + 1], thick, (ids[k],))
        b.slab(lead[k], trail[k + 1], trail[k], thick, (ids[k],))
    return ids


def _insect(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["beetle", "ant", "mantis", "winged"], p=[0.3, 0.3, 0.15, 0.25]))
    b = _Builder("insect", variant)
    r_t = rng.uniform(0.09, 0.13)
    leg_len = rng.uniform(0.45, 0.75)
    h = leg_len * rng.uniform(0.22, 0.32)
    n_abd = int(rng.integers(1, 4))
    n_ant = int(rng.integers(2, 5))
    n_leg = int(rng.choice([4, 5]))
    mandibles = rng.random() < 0.4
    wings = variant == "winged" or (variant == "beetle" and rng.random() < 0.3)
    n_wings = int(rng.choice([1, 2])) if wings else 0
    count = 1 + 3 + n_abd + 1 + 2 * (n_ant + 1) + 6 * n_leg + (4 if mandibles else 0) + 4 * n_wings
    while count > max_joints and n_ant > 1:
        n_ant -= 1
        count -= 2
    thorax = b.add("thorax", -1, (0, h, 0), "root", "spine", hinge=X)
    b.ellipsoid((0, h, 0), (r_t * 0.85, r_t * 0.8, r_t * 1.3), (thorax,), blend=r_t * 0.25)
    neck = b.add("neck", thorax, (0, h + r_t * 0.2, r_t * 1.2), "neck", "spine", 0, 0, X)
    head = b.add("head", neck, (0, h + r_t * 0.3, r_t * 1.55), "head", "spine", 1, 0, X)
    rh = r_t * rng.uniform(0.65, 0.95)
    head_c = b.pos[head] + np.array([0, 0, rh * 0.7])
    b.add("head_end", head, head_c + np.array([0, -rh * 0.3, rh * 1.05]), "tip", "spine", 2, 0, X)
    b.capsule(neck, head, r_t * 0.35, r_t * 0.32, blend=r_t * 0.15)
    b.ellipsoid(head_c, (rh, rh * 0.85, rh * 0.9), (head,), blend=rh * 0.3)
    r_a = r_t * rng.uniform(0.9, 1.35)
    abd_len = r_a * rng.uniform(2.2, 3.4)
    pts = _curve((0, h + r_t * 0.25, -r_t * 1.5), (0, 0.15, -1), abd_len, n_abd, X, rng.uniform(-25, 10))
    prev = thorax
    for i in range(n_abd + 1):
        name = f"abdomen_{i + 1:02d}"
        prev = b.add(name, prev, pts[i], "abdomen" if i < n_abd else "tip", "abdomen", i, 0, X)
    abd = [b.names.index(f"abdomen_{i + 1:02d}") for i in range(n_abd + 1)]
    gap = r_a * 0.25 if variant == "ant" else 0.0
    for i in range(n_abd):
        p0, p1 = b.pos[abd[i]], b.pos[abd[i + 1]]
        bulge = 1.0 - 0.35 * abs(i - (n_abd - 1) * 0.4) / max(n_abd, 1)
        b.ellipsoid((p0 + p1) / 2, (r_a * bulge, r_a * 0.85 * bulge, np.linalg.norm(p1 - p0) * 0.5 + r_a * 0.35 - gap),
                    (abd[i],), rot=frame_along(p1 - p0), blend=r_a * 0.3)
    b.capsule(thorax, abd[0], r_t * 0.3, r_t * 0.3, blend=r_t * 0.2)
    # antennae
    ant_len = r_t * rng.uniform(2.0, 5.0)
    for s in (1, -1):
        L = side_letter(s)
        base = head_c + mirror_point((rh * 0.45, rh * 0.6, rh * 0.5), s)
        d = unit(mirror_point((0.5, 0.7, 1.0), s))
        pts = _curve(base, d, ant_len, n_ant, mirror_axis(X, s), rng.uniform(-40, 40))
        b.chain(head, f"antenna_{L}", pts, _taper(r_t * 0.09, r_t * 0.06, n_ant + 1), "antenna", mirror_axis(X, s), s,
                first_blend=r_t * 0.04)
        if mandibles:
            mb = head_c + mirror_point((rh * 0.55, -rh * 0.45, rh * 0.65), s)
            md = unit(mirror_point((0.15, -0.2, 1.0), s))
            b.chain(head, f"mandible_{L}", [mb, mb + md * rh * 1.1], [rh * 0.22, rh * 0.08], "mandible",
                    mirror_axis(Y, s), s, first_blend=rh * 0.1)
    # legs
    r_leg = r_t * rng.uniform(0.16, 0.24)
    for k, (nm, z, ang) in enumerate((("front", 0.45, 32), ("mid", 0.0, 3), ("back", -0.35, -22))):
        for s in (1, -1):
            L = side_letter(s)
            a = np.radians(ang + rng.uniform(-8, 8))
            outd = mirror_point((np.cos(a), 0, np.sin(a)), s)
            up = np.radians(rng.uniform(25, 45))
            down = np.radians(rng.uniform(55, 75))
            lens = leg_len * np.array([0.12, 0.38, 0.35, 0.15])
            if variant == "mantis" and nm == "front":
                lens *= 0.8
            p0 = np.array([0, h - r_t * 0.35, z * r_t]) + outd * r_t * 0.6
            p1 = p0 + outd * lens[0]
            p2 = p1 + (outd * np.cos(up) + Y * np.sin(up)) * lens[1]
            p3 = p2 + (outd * np.cos(down) - Y * np.sin(down)) * lens[2]
            p3[1] = max(p3[1], r_leg * 2.0)
            p4 = p3 + outd * lens[3] * 0.8 - Y * (p3[1] - r_leg * 0.8)
            pts = [p0, p1, p2, p3, p4] if n_leg == 5 else [p0, p2, p3, p4]
            lift_axis = -unit(np.cross(Y, outd))
            roles = ["sprawl_root", "sprawl_lift", "sprawl_knee", "sprawl_foot"]
            hinges = [mirror_axis(-Y, s), lift_axis, -lift_axis, -lift_axis]
            if n_leg == 4:
                roles, hinges = roles[1:], hinges[1:]
                roles[0] = "sprawl_root"
            radii = _taper(r_leg * 1.2, r_leg * 0.6, len(pts))
            b.chain(thorax, f"leg_{nm}_{L}", pts, radii, roles, hinges, s, first_blend=r_leg * 0.6)
    if wings:
        thick = 0.006
        for w in range(n_wings):
            for s in (1, -1):
                L = side_letter(s)
                base = np.array([0, h + r_t * 0.7, r_t * (0.45 - 0.9 * w)])
                base = mirror_point(base + np.array([r_t * 0.3, 0, 0]), s)
                ang = -np.radians(rng.uniform(10, 30) + 30 * w)
                d = unit(mirror_point((np.cos(ang), np.tan(np.radians(rng.uniform(18, 30))), np.sin(ang)), s))
                wl = r_t * rng.uniform(3.0, 4.5)
                pts = [base, base + d * wl * 0.5, base + d * wl]
                nm = "front" if w == 0 else "back"
                ids = b.chain(thorax, f"wing_{nm}_{L}", pts, [r_t * 0.08, r_t * 0.06, r_t * 0.04],
                              ["wing_root", "wing_finger"], [mirror_axis(Z, s), mirror_axis(Z, s)], s,
                              first_blend=r_t * 0.05)
                back = np.array([0, 0, -wl * 0.3])
                b.slab(b.pos[ids[0]], b.pos[ids[1]], b.pos[ids[1]] + back, max(thick, r_t * 0.04), (ids[0],))
                b.slab(b.pos[ids[1]], b.pos[ids[2]], b.pos[ids[1]] + back, max(thick, r_t * 0.04), (ids[1],))
    return b.build("walk")


def _spider(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["spider", "harvestman", "crab"], p=[0.6, 0.2, 0.2]))
    b = _Builder("spider", variant)
    r_c = rng.uniform(0.1, 0.14)
    leg_len = r_c * (rng.uniform(5.0, 8.0) if variant != "harvestman" else rng.uniform(9.0, 12.0))
    if variant == "crab":
        leg_len = r_c * rng.uniform(4.0, 5.5)
    n_leg = int(rng.integers(5, 8))  # joints per leg, tip included
    palps = rng.random() < 0.7 and variant != "crab"
    n_pairs = 4
    while 3 + 2 * n_pairs * n_leg + (6 if palps else 0) + (6 if variant == "crab" else 0) > max_joints:
        if n_leg > 4:
            n_leg -= 1
        else:
            palps = False
            break
    h = leg_len * rng.uniform(0.12, 0.2)
    root = b.add("cephalothorax", -1, (0, h, 0), "root", "spine", hinge=X)
    flat = 0.7 if variant == "crab" else 0.75
    b.ellipsoid((0, h, 0), (r_c * (1.3 if variant == "crab" else 1.0), r_c * flat, r_c * 1.1), (root,),
                blend=r_c * 0.2)
    b.add("head_end", root, (0, h, r_c * 1.25), "tip", "spine", 1, 0, X)
    if variant != "crab":
        r_a = r_c * rng.uniform(1.1, 1.7)
        a0 = b.add("abdomen_01", root, (0, h + r_c * 0.15, -r_c * 1.25), "abdomen", "abdomen", 0, 0, X)
        a1 = b.add("abdomen_02", a0, (0, h + r_c * 0.45, -r_c * 1.35 - r_a * 2.0), "tip", "abdomen", 1, 0, X)
        b.capsule(root, a0, r_c * 0.35, r_c * 0.35, owners=(root,), blend=r_c * 0.15)
        b.ellipsoid((b.pos[a0] + b.pos[a1]) / 2, (r_a * 0.75, r_a * 0.7, r_a * 1.05), (a0,),
                    rot=frame_along(b.pos[a1] - b.pos[a0]), blend=r_a * 0.2)
    r_leg = r_c * (0.16 if variant != "harvestman" else 0.09)
    angles = np.array([60, 22, -14, -45]) if variant != "crab" else np.array([30, 2, -24, -50])
    angles = angles + rng.uniform(-5, 5, 4)
    for k in range(n_pairs):
        for s in (1, -1):
            L = side_letter(s)
            a = np.radians(angles[k])
            outd = mirror_point((np.cos(a), 0, np.sin(a)), s)
            p0 = np.array([0, h - r_c * 0.1, 0]) + outd * r_c * 0.8
            knee_h = leg_len * rng.uniform(0.25, 0.4) * (0.5 if variant == "crab" else 1.0)
            reach = leg_len * 0.75
            n = n_leg
            # a rising femur to the knee, then a descending arc to the ground
            t = np.linspace(0.0, 1.0, n)
            knee_t = 0.35
            pts = []
            for ti in t:
                if ti <= knee_t:
                    u = ti / knee_t
                    pts.append(p0 + outd * reach * 0.35 * u + Y * (h * 0.2 + knee_h) * np.sin(u * np.pi / 2) * 0.95)
                else:
                    u = (ti - knee_t) / (1 - knee_t)
                    y = (h + knee_h) * np.cos(u * np.pi / 2) ** 1.3 - h + r_leg
                    pts.append(p0 + outd * (reach * 0.35 + reach * 0.65 * np.sin(u * np.pi / 2)) + Y * y)
            pts[0] = p0
            pts[-1][1] = r_leg * 0.5
            lift_axis = -unit(np.cross(Y, outd))
            roles = ["sprawl_root", "sprawl_lift"] + ["sprawl_knee"] * (n - 3)
            roles[-1] = "sprawl_foot" if n > 3 else roles[-1]
            hinges = [mirror_axis(-Y, s), lift_axis] + [-lift_axis] * (n - 3)
            radii = _taper(r_leg * 1.2, r_leg * 0.45, n)
            b.chain(root, f"leg_{k + 1}_{L}", pts, radii, roles[: n - 1], hinges[: n - 1], s, first_blend=r_leg * 0.5)
    if palps:
        for s in (1, -1):
            L = side_letter(s)
            base = np.array([0, h - r_c * 0.2, r_c * 0.9]) + mirror_point((r_c * 0.35, 0, 0), s)
            pts = _polyline(base, [mirror_point((0.3, 0.3, 1.0), s), mirror_point((0.2, -0.6, 1.0), s)],
                            [r_c * 0.6, r_c * 0.5])
            b.chain(root, f"palp_{L}", pts, [r_c * 0.12, r_c * 0.1, r_c * 0.08], "mandible", mirror_axis(X, s), s,
                    first_blend=r_c * 0.05)
    if variant == "crab":  # claws
        for s in (1, -1):
            L = side_letter(s)
            base = np.array([0, h, r_c * 0.9]) + mirror_point((r_c * 0.6, 0, 0), s)
            d1 = unit(mirror_point((0.8, 0.1, 0.6), s))
            d2 = unit(mirror_point((-0.1, 0.1, 1.0), s))
            p1 = base + d1 * r_c * 1.0
            p2 = p1 + d2 * r_c * 0.9
            ids = b.chain(root, f"claw_{L}", [base, p1, p2], [r_c * 0.2, r_c * 0.18, r_c * 0.2],
                          ["shoulder", "elbow"], [mirror_axis(-Y, s), mirror_axis(-Y, s)], s, first_blend=r_c * 0.1)
            b.roles[ids[2]] = "wrist"
            p3 = p2 + d2 * r_c * 0.8
            b.add(f"claw_{L}_04", ids[2], p3, "tip", f"claw_{L}", 3, s, X)
            b.ellipsoid((p2 + p3) / 2, (r_c * 0.22, r_c * 0.3, r_c * 0.5), (ids[2],), rot=frame_along(d2),
                        blend=r_c * 0.1)
    return b.build("walk")


def _snake(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["snake", "worm", "caterpillar"], p=[0.6, 0.25, 0.15]))
    b = _Builder("snake", variant)
    n = int(rng.integers(3, MAX_CHAIN_BONES + 1))
    length = 1.0
    r_max = length * (rng.uniform(0.025, 0.05) if variant == "snake" else rng.uniform(0.035, 0.07))
    z = np.linspace(length * 0.5, -length * 0.5, n + 1)
    prof_t = np.linspace(0, 1, n + 1)
    if variant == "snake":
        prof = np.clip(np.sin(np.pi * (0.12 + 0.88 * prof_t)) ** 0.6, 0.12, 1.0) * r_max
        prof[0] = r_max * 0.7
    else:
        prof = np.full(n + 1, r_max)
        prof[-1] = r_max * 0.7
    wave = rng.uniform(0, 0.03)
    xs = wave * np.sin(np.linspace(0, rng.uniform(1, 3) * np.pi, n + 1))
    names = ["spine_01"] + [f"spine_{i + 1:02d}" for i in range(1, n + 1)]
    root = b.add(names[0], -1, (xs[0], r_max, z[0]), "root", "spine", 0, 0, X)
    prev = root
    ids = [root]
    for i in range(1, n + 1):
        prev = b.add(names[i], prev, (xs[i], r_max, z[i]), "body" if i < n else "tip", "spine", i, 0, X)
        ids.append(prev)
    for i in range(n):
        b.capsule(ids[i], ids[i + 1], prof[i], prof[i + 1], blend=r_max * 0.4)
        if variant in ("worm", "caterpillar"):
            mid = (b.pos[ids[i]] + b.pos[ids[i + 1]]) / 2
            seg = np.linalg.norm(b.pos[ids[i + 1]] - b.pos[ids[i]])
            b.ellipsoid(mid, (r_max * 1.12, r_max * 1.12, seg * 0.55), (ids[i],), blend=r_max * 0.25)
        if variant == "caterpillar" and i % 2 == 0 and i < n - 1:
            for s in (1, -1):  # stubby legs, skinned to the body segment
                p = (b.pos[ids[i]] + b.pos[ids[i + 1]]) / 2
                a = p + mirror_point((r_max * 0.6, -r_max * 0.5, 0), s)
                b.parts.append(Capsule(a, a + mirror_point((r_max * 0.3, -r_max * 0.5, 0), s), r_max * 0.3,
                                       r_max * 0.22, (ids[i],), r_max * 0.15))
    # head forward of the root
    rh = r_max * (rng.uniform(1.0, 1.5) if variant == "snake" else 1.05)
    hl = rh * rng.uniform(1.5, 2.5)
    head = b.add("head", root, (xs[0], r_max, z[0] + rh * 0.3), "head", "spine", 0, 0, X)
    b.add("head_end", head, (xs[0], r_max, z[0] + rh * 0.3 + hl), "tip", "spine", 1, 0, X)
    b.capsule(root, head, prof[0], rh * 0.8, owners=(root,), blend=r_max * 0.3)
    b.ellipsoid((xs[0], r_max * (1.0 if variant == "snake" else 1.0), z[0] + rh * 0.3 + hl * 0.45),
                (rh, rh * (0.7 if variant == "snake" else 0.95), hl * 0.55), (head,), blend=r_max * 0.4)
    return b.build("slither")


def _fish(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["fish", "shark", "eel", "flatfish", "tadpole"],
                                        p=[0.38, 0.22, 0.12, 0.13, 0.15]))
    b = _Builder("fish", variant)
    length = 1.0
    n = {"eel": int(rng.integers(8, 13)), "tadpole": int(rng.integers(2, 6))}.get(variant, int(rng.integers(3, 11)))
    depth = length * {"fish": rng.uniform(0.14, 0.24), "shark": rng.uniform(0.09, 0.13),
                      "eel": rng.uniform(0.04, 0.06), "flatfish": rng.uniform(0.22, 0.3),
                      "tadpole": rng.uniform(0.16, 0.22)}[variant]
    width = depth * {"fish": rng.uniform(0.35, 0.55), "shark": rng.uniform(0.75, 0.95),
                     "eel": 0.9, "flatfish": rng.uniform(0.22, 0.3), "tadpole": rng.uniform(0.8, 1.0)}[variant]
    h = 0.5 * length
    z_root = length * 0.22
    z_tail = -length * 0.36
    root = b.add("spine_01", -1, (0, h, z_root), "root", "spine", 0, 0, X)
    zs = np.linspace(z_root, z_tail, n + 1)
    ids = [root]
    for i in range(1, n + 1):
        ids.append(b.add(f"spine_{i + 1:02d}", ids[-1], (0, h, zs[i]), "body", "spine", i, 0, X))
    # laterally compressed body ellipsoids, tapering to the tail
    for i in range(n):
        t = i / max(n - 1, 1)
        f = np.clip(1.0 - 0.8 * t ** (1.4 if variant != "tadpole" else 0.6), 0.18, 1.0)
        p0, p1 = b.pos[ids[i]], b.pos[ids[i + 1]]
        seg = np.linalg.norm(p1 - p0)
        b.ellipsoid((p0 + p1) / 2, (width * 0.5 * f, depth * 0.5 * f, seg * 0.95 + depth * 0.1 * f), (ids[i],),
                    blend=depth * 0.25 * f)
    # head
    head_len = length * rng.uniform(0.18, 0.26)
    head = b.add("head", root, (0, h, z_root + depth * 0.3), "head", "spine", 0, 0, X)
    snout = b.add("head_end", head, (0, h - depth * 0.05, z_root + depth * 0.3 + head_len), "tip", "spine", 1, 0, X)
    b.ellipsoid((0, h, z_root + head_len * 0.45), (width * 0.5, depth * 0.5, head_len * 0.7), (head,),
                blend=depth * 0.15)
    b.capsule(head, snout, min(width, depth) * 0.35, min(width, depth) * 0.15, blend=depth * 0.1)
    thick = depth * 0.03
    # caudal fin: two lobes
    tail = ids[-1]
    tp = b.pos[tail]
    fin_h = depth * rng.uniform(0.7, 1.2)
    fin_l = depth * rng.uniform(0.5, 0.9)
    lobes = (("top", 1), ("bottom", -1)) if variant != "tadpole" else (("top", 1),)
    if variant == "tadpole":
        fin_h *= 0.5
        fin_l *= 1.6
    for nm, sgn in lobes:
        lobe = 1.0 if (variant != "shark" or sgn > 0) else 0.6
        lobe_root = tp + np.array([0, sgn * fin_h * 0.12, -fin_l * 0.12])
        pts = [lobe_root, tp + np.array([0, sgn * fin_h * 0.5 * lobe, -fin_l * 0.55]),
               tp + np.array([0, sgn * fin_h * lobe, -fin_l])]
        fid = b.chain(tail, f"fin_tail_{nm}", pts, [thick * 1.5, thick * 1.3, thick * 1.2], "fin", X, 0,
                      first_blend=depth * 0.04)
        b.capsule(tail, fid[0], min(width, depth) * 0.12, thick * 1.5, blend=depth * 0.04)
        b.slab(tp, b.pos[fid[2]], tp + np.array([0, sgn * fin_h * 0.15, -fin_l * 0.75]), thick, (fid[0], fid[1]))
        b.slab(tp, b.pos[fid[1]], b.pos[fid[2]], thick, (fid[0], fid[1]))
    b.roles[tail] = "body"
    if variant == "tadpole":
        return b.build("swim")
    # dorsal fin
    mid = ids[max(1, n // 3)]
    dp = b.pos[mid] + np.array([0, depth * 0.4, 0])
    dh = depth * (rng.uniform(0.4, 0.8) if variant != "eel" else 0.25)
    dl = length * rng.uniform(0.12, 0.3) if variant != "eel" else length * 0.5
    did = b.chain(mid, "fin_dorsal", [dp, dp + np.array([0, dh, -dl * 0.6])], [thick * 1.4, thick * 1.2], "fin", X, 0,
                  first_blend=depth * 0.05)
    b.slab(dp + np.array([0, 0, dl * 0.3]), b.pos[did[1]], dp - np.array([0, 0, dl * 0.6]), thick, (did[0],))
    # pectoral fins
    pz = b.pos[root][2] - depth * 0.2
    for s in (1, -1):
        L = side_letter(s)
        base = np.array([0, h - depth * 0.2, pz]) + mirror_point((width * 0.4, 0, 0), s)
        d = unit(mirror_point((0.8, -0.3, -0.6), s))
        pl = depth * rng.uniform(0.5, 0.9)
        pid = b.chain(root, f"fin_pectoral_{L}", [base, base + d * pl], [thick * 1.4, thick * 1.2], "fin",
                      mirror_axis(Z, s), s, first_blend=depth * 0.04)
        b.slab(base, b.pos[pid[1]], base + np.array([0, -depth * 0.08, -pl * 0.8]), thick, (pid[0],))
    return b.build("swim")


def _tentacled(rng: np.random.Generator, max_joints: int, variant: str | None = None) -> BodyPlan:
    variant = variant or str(rng.choice(["octopus", "starfish", "jellyfish"], p=[0.55, 0.25, 0.2]))
    b = _Builder("tentacled", variant)
    r = rng.uniform(0.12, 0.18)
    if variant == "starfish":
        n_arms = int(rng.integers(4, 8))
    elif variant == "jellyfish":
        n_arms = int(rng.integers(6, 11))
    else:
        n_arms = int(rng.choice([6, 8, 8, 8, 10]))
    n_seg = int(rng.integers(3, 8)) if variant != "starfish" else int(rng.integers(1, 5))
    extra = 3 if variant == "octopus" else 2
    while extra + n_arms * (n_seg + 1) > max_joints:
        if n_seg > 2:
            n_seg -= 1
        else:
            n_arms -= 1
    arm_len = r * (rng.uniform(2.5, 4.5) if variant != "jellyfish" else rng.uniform(3.0, 5.0))
    if variant == "starfish":
        h = r * 0.35
        root = b.add("body", -1, (0, h, 0), "root", "spine", hinge=X)
        b.ellipsoid((0, h, 0), (r, r * 0.35, r), (root,), blend=r * 0.15)
        b.add("body_end", root, (0, h + r * 0.45, 0), "tip", "spine", 1, 0, X)
    elif variant == "jellyfish":
        h = arm_len * 1.1
        root = b.add("body", -1, (0, h, 0), "root", "spine", hinge=X)
        bell = b.add("bell", root, (0, h + r * 0.6, 0), "neck", "spine", 1, 0, X)
        b.add("bell_end", bell, (0, h + r * 1.2, 0), "tip", "spine", 2, 0, X)
        b.ellipsoid((0, h + r * 0.35, 0), (r * 1.35, r * 0.8, r * 1.35), (root, bell), blend=r * 0.2)
    else:
        h = r * 0.55
        root = b.add("body", -1, (0, h + r * 0.3, 0), "root", "spine", hinge=X)
        m0 = b.add("mantle_01", root, (0, h + r * 0.9, -r * 0.2), "neck", "spine", 1, 0, X)
        m1 = b.add("mantle_02", m0, (0, h + r * 2.3, -r * 0.8), "tip", "spine", 2, 0, X)
        b.ellipsoid((0, h + r * 0.35, 0), (r * 0.95, r * 0.75, r * 0.95), (root,), blend=r * 0.2)
        b.ellipsoid((b.pos[m0] + b.pos[m1]) / 2, (r * 0.95, r * 0.95, r * 1.35), (m0,),
                    rot=frame_along(b.pos[m1] - b.pos[m0], up=(0, 0, 1)), blend=r * 0.3)
        for s in (1, -1):  # eyes
            b.ellipsoid(np.array([0, h + r * 0.65, r * 0.55]) + mirror_point((r * 0.5, 0, 0), s),
                        (r * 0.22, r * 0.25, r * 0.2), (root,), blend=r * 0.1)
    offset = rng.uniform(0, 2 * np.pi)
    r_arm = r * {"octopus": rng.uniform(0.22, 0.32), "starfish": rng.uniform(0.32, 0.42),
                 "jellyfish": rng.uniform(0.08, 0.12)}[variant]
    for k in range(n_arms):
        a = offset + 2 * np.pi * k / n_arms + rng.uniform(-0.1, 0.1)
        outd = np.array([np.sin(a), 0.0, np.cos(a)])
        if variant == "jellyfish":
            base = np.array([0, h, 0]) + outd * r * 0.9
            pts = _curve(base, (outd * 0.25 - Y), arm_len * rng.uniform(0.8, 1.1), n_seg,
                         unit(np.cross(Y, outd)), rng.uniform(-20, 20))
            hinge = unit(np.cross(outd, Y))
        else:
            base = np.array([0, b.pos[root][1] - (0.0 if variant == "starfish" else r * 0.35), 0]) + outd * r * 0.7
            drop = 0.0 if variant == "starfish" else -0.35
            pts = _curve(base, outd + Y * drop, arm_len, n_seg, unit(np.cross(Y, outd)),
                         rng.uniform(-25, 25) if variant == "octopus" else 0)
            for p in pts:
                p[1] = max(p[1], r_arm * 0.6)
            hinge = unit(np.cross(Y, outd))
        side = 0
        radii = _taper(r_arm, r_arm * 0.22, n_seg + 1, 0.8)
        b.chain(root, f"arm_{k + 1}", pts, radii, "tentacle", hinge, side, first_blend=r_arm * 0.8)
    loco = "swim" if variant == "jellyfish" else "walk"
    return b.build(loco)


BUILDERS = {
    "humanoid": _humanoid,
    "quadruped": _quadruped,
    "bird": _bird,
    "insect": _insect,
    "spider": _spider,
    "snake": _snake,
    "fish": _fish,
    "tentacled": _tentacled,
    "dragon": _dragon,
}


# --------------------------------------------------------------------------------------------
# Axes, limits, clearance
# --------------------------------------------------------------------------------------------


def joint_axes(plan: BodyPlan) -> np.ndarray:
    """Per-joint rotation axes ``float64 [J, 3, 3]``: rows are the flex, splay and twist axes.

    The twist axis follows the joint's own bone (towards the child that best continues the
    incoming direction), the flex axis is the hinge hint made orthogonal to it, and the splay axis
    completes the frame. On the right side the splay and twist axes are negated so equal angles on
    both sides give mirror-symmetric poses.
    """
    J = plan.n_joints
    kids = plan.children()
    axes = np.zeros((J, 3, 3))
    pos = plan.joints.astype(np.float64)
    for j in range(J):
        p = int(plan.parents[j])
        incoming = unit(pos[j] - pos[p]) if p >= 0 else Z
        if kids[j]:
            dirs = [unit(pos[c] - pos[j]) for c in kids[j]]
            twist = max(dirs, key=lambda d: float(d @ incoming)) if p >= 0 else dirs[0]
        else:
            twist = incoming
        if np.linalg.norm(twist) < 1e-9:
            twist = Z
        hinge = plan.hinges[j].astype(np.float64)
        flex = hinge - (hinge @ twist) * twist
        if np.linalg.norm(flex) < 1e-6:
            alt = X if abs(twist @ X) < 0.9 else Y
            flex = alt - (alt @ twist) * twist
        flex = unit(flex)
        sgn = -1.0 if plan.sides[j] < 0 else 1.0
        axes[j] = np.stack([flex, sgn * np.cross(twist, flex), sgn * twist])
    return axes


def joint_limits(plan: BodyPlan) -> np.ndarray:
    """Per-joint channel limits ``float64 [J, 3, 2]`` in degrees (flex, splay, twist) x (min, max)."""
    return np.asarray([ROLE_LIMITS[r] for r in plan.roles], dtype=np.float64)


def _chain_parent(plan: BodyPlan) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for j, c in enumerate(plan.chains):
        if c in out:
            continue
        p = int(plan.parents[j])
        out[c] = plan.chains[p] if p >= 0 else None
    return out


def clearance_violations(plan: BodyPlan, surface: SurfaceConfig | None = None,
                         limit: int = 10) -> list[tuple[int, int, float]]:
    """Pairs of parts from different limbs that would touch or blend in the rest shape.

    Each part is covered by spheres; spheres inside the body a limb hangs from (a part of an
    ancestor chain) are ignored, since limbs may merge there. Parts of one chain never count, nor do
    parts of a chain and of one of its ancestor chains that touch joints at most two bones apart
    (a thigh and the hips, a forearm and the upper arm). Neighbouring fins may join, a fin may lie
    along the body it grows from, and sibling tentacles, toes or sprawled legs may meet at their
    first bones, where they leave the body or foot.

    Returns up to ``limit`` tuples ``(part_a, part_b, gap)`` with the gap left (negative: overlap),
    worst first.
    """
    surface = surface or SurfaceConfig()
    parts, voxel = prepare_parts(plan.parts, surface)
    n_parts = len(parts)
    chain_names = sorted(set(plan.chains))
    cid = {c: i for i, c in enumerate(chain_names)}
    chain_parent = _chain_parent(plan)
    n_ch = len(chain_names)
    ancestor = np.zeros((n_ch, n_ch), dtype=bool)  # ancestor[a, b]: chain a is an ancestor of chain b
    for c in chain_names:
        p = chain_parent.get(c)
        while p is not None:
            ancestor[cid[p], cid[c]] = True
            p = chain_parent.get(p)
    part_chain = np.asarray([cid[plan.chains[p.owners[0]]] for p in parts])
    # joints each part touches (its owners, and any joint inside it)
    pos = plan.joints.astype(np.float64)
    touched = np.zeros((n_parts, plan.n_joints), dtype=bool)
    for i, p in enumerate(parts):
        touched[i] = p.sdf(pos) <= voxel
        touched[i, list(p.owners)] = True
    tree = tree_distances(plan.parents)
    close_joints = (tree <= 2).astype(np.int32)
    near = (touched.astype(np.int32) @ close_joints @ touched.T.astype(np.int32)) > 0  # [P, P]
    related = ancestor[part_chain][:, part_chain] | ancestor[part_chain][:, part_chain].T
    check = (part_chain[:, None] != part_chain[None, :]) & ~(related & near)
    roots = _chain_roots(plan)
    root_role = [plan.roles[roots[plan.chains[p.owners[0]]]] for p in parts]
    fin = np.asarray([r == "fin" for r in root_role])
    check &= ~(fin[:, None] & fin[None, :])  # neighbouring fins may join
    check &= ~((fin[:, None] | fin[None, :]) & related)  # a fin lies along the body it grows from
    # tentacles, toes and sprawled legs may meet where they leave the body or foot (their first bones)
    first_bone = [int(plan.segs[p.owners[0]]) == int(plan.segs[roots[plan.chains[p.owners[0]]]]) for p in parts]
    base = np.asarray([r in WEB_ROLES and f for r, f in zip(root_role, first_bone)])
    chain_parent_joint = np.asarray([int(plan.parents[roots[plan.chains[p.owners[0]]]]) for p in parts])
    check &= ~(base[:, None] & base[None, :] & (chain_parent_joint[:, None] == chain_parent_joint[None, :]))
    np.fill_diagonal(check, False)
    # sphere covers, without the spheres embedded in an ancestor chain's parts
    centers, radii, owner = [], [], []
    for i, p in enumerate(parts):
        c, r = p.spheres()
        centers.append(c)
        radii.append(r)
        owner.append(np.full(len(r), i))
    centers, radii, owner = np.concatenate(centers), np.concatenate(radii), np.concatenate(owner)
    embedded = np.zeros(len(radii), dtype=bool)
    for q, p in enumerate(parts):
        hosts = ancestor[part_chain[q], part_chain[owner]]  # spheres whose chain descends from q's chain
        if hosts.any():
            idx = np.flatnonzero(hosts & ~embedded)
            embedded[idx[p.sdf(centers[idx]) < 0]] = True
    keep = ~embedded
    centers, radii, owner = centers[keep], radii[keep], owner[keep]
    blend = np.asarray([p.blend for p in parts])
    need = 0.5 * (blend[:, None] + blend[None, :]) + voxel
    sq = np.einsum("sd,sd->s", centers, centers)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * centers @ centers.T, 0.0))
    gap = dist - radii[:, None] - radii[None, :] - need[owner][:, owner]
    gap[~check[owner][:, owner]] = np.inf
    worst = np.full((n_parts, n_parts), np.inf)
    if len(owner):
        present, starts = np.unique(owner, return_index=True)  # spheres are grouped by part, in order
        per_part = np.minimum.reduceat(np.minimum.reduceat(gap, starts, axis=0), starts, axis=1)
        worst[np.ix_(present, present)] = per_part
    a_idx, b_idx = np.nonzero(np.triu(worst < 0))
    bad = sorted(((int(a), int(b), float(worst[a, b])) for a, b in zip(a_idx, b_idx)), key=lambda t: t[2])
    return bad[:limit]


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------

LIMB_ROLES = {"leg_root", "sprawl_root", "shoulder", "clavicle", "wing_root", "tentacle", "ear", "antenna",
              "fin", "trunk", "tail", "mandible"}


def _chain_roots(plan: BodyPlan) -> dict[str, int]:
    roots: dict[str, int] = {}
    for j, c in enumerate(plan.chains):
        if c not in roots:
            roots[c] = j
    return roots


def subtree(parents: np.ndarray, root: int) -> list[int]:
    """Joints of the subtree under ``root`` (inclusive), in order; parents must precede children."""
    inside = np.zeros(len(parents), dtype=bool)
    inside[root] = True
    for j in range(root + 1, len(parents)):
        if parents[j] >= 0 and inside[parents[j]]:
            inside[j] = True
    return [int(j) for j in np.flatnonzero(inside)]


def remove_joints(plan: BodyPlan, drop: set[int]) -> BodyPlan:
    """The plan without the joints in ``drop`` (a union of subtrees) and the parts they own."""
    keep = [j for j in range(plan.n_joints) if j not in drop]
    remap = {old: new for new, old in enumerate(keep)}
    parents = np.asarray([remap[int(plan.parents[j])] if plan.parents[j] >= 0 else -1 for j in keep], np.int32)
    parts = []
    for p in plan.parts:
        owners = tuple(remap[o] for o in p.owners if o in remap)
        if not owners or any(o in drop for o in p.owners[:1]):
            continue
        q = replace(p, owners=owners)
        parts.append(q)
    return replace(plan, names=[plan.names[j] for j in keep], parents=parents, joints=plan.joints[keep],
                   roles=[plan.roles[j] for j in keep], chains=[plan.chains[j] for j in keep],
                   segs=plan.segs[keep], sides=plan.sides[keep], hinges=plan.hinges[keep], parts=parts,
                   mutations=list(plan.mutations))


def _limb_chains(plan: BodyPlan) -> list[str]:
    roots = _chain_roots(plan)
    return [c for c, r in roots.items() if plan.roles[r] in LIMB_ROLES and plan.parents[r] >= 0]


def _transform_subtree(plan: BodyPlan, joints: list[int], fn_point, rot: np.ndarray | None = None,
                       radius_scale: float = 1.0) -> tuple[np.ndarray, list[Primitive]]:
    """New joint positions and the transformed copies of the parts owned by ``joints``."""
    new_pos = plan.joints.astype(np.float64).copy()
    for j in joints:
        new_pos[j] = fn_point(new_pos[j])
    owned = set(joints)
    parts = []
    for p in plan.parts:
        if p.owners[0] not in owned:
            continue
        if isinstance(p, Capsule):
            q = Capsule(fn_point(p.a), fn_point(p.b), p.ra * radius_scale, p.rb * radius_scale, p.owners,
                        p.blend * radius_scale)
        elif isinstance(p, Ellipsoid):
            q = Ellipsoid(fn_point(p.center), p.radii * radius_scale,
                          p.rotation if rot is None else rot @ p.rotation, p.owners, p.blend * radius_scale)
        else:
            q = Slab(np.stack([fn_point(t) for t in p.tri]), p.thickness * radius_scale, p.owners,
                     p.blend * radius_scale)
        parts.append(q)
    return new_pos, parts


def _mutate_drop(plan: BodyPlan, rng: np.random.Generator) -> BodyPlan | None:
    chains = _limb_chains(plan)
    if not chains:
        return None
    c = str(rng.choice(chains))
    root = _chain_roots(plan)[c]
    drop = set(subtree(plan.parents, root))
    if plan.n_joints - len(drop) < 6:
        return None
    out = remove_joints(plan, drop)
    out.mutations.append(f"missing {c}")
    return out


def _mutate_scale(plan: BodyPlan, rng: np.random.Generator) -> BodyPlan | None:
    chains = _limb_chains(plan)
    if not chains:
        return None
    c = str(rng.choice(chains))
    root = _chain_roots(plan)[c]
    joints = subtree(plan.parents, root)
    s = float(rng.choice([rng.uniform(0.65, 0.85), rng.uniform(1.15, 1.35)]))
    origin = plan.joints[root].astype(np.float64)
    new_pos, new_parts = _transform_subtree(plan, joints, lambda p: origin + (p - origin) * s,
                                            radius_scale=float(np.sqrt(s)))
    owned = set(joints)
    parts = [p for p in plan.parts if p.owners[0] not in owned] + new_parts
    out = replace(plan, joints=new_pos.astype(np.float32), parts=parts, mutations=list(plan.mutations))
    out.mutations.append(f"{c} scaled x{s:.2f}")
    return out


def _mutate_extra(plan: BodyPlan, rng: np.random.Generator) -> BodyPlan | None:
    """Copy a limb (with its mirror twin) further along the body axis."""
    roots = _chain_roots(plan)
    cands = [c for c in _limb_chains(plan) if plan.roles[roots[c]] in
             {"leg_root", "sprawl_root", "shoulder", "clavicle", "tentacle", "wing_root"}
             and not c.endswith("_r") and "finger" not in c]
    if not cands:
        return None
    c = str(rng.choice(cands))
    group = [c]
    if c.endswith("_l") and c[:-2] + "_r" in roots:
        group.append(c[:-2] + "_r")
    trunk = [j for j in range(plan.n_joints) if plan.chains[j] == plan.chains[0] or plan.roles[j] in ("spine", "body")]
    ext = plan.extent()
    base = c[:-2] if c.endswith("_l") else c
    new_base = base + "_extra"
    if any(ch.startswith(new_base) for ch in plan.chains):
        return None
    for attempt in range(4):
        shift = np.array([0.0, 0.0, (1 if rng.random() < 0.5 else -1) * ext * rng.uniform(0.12, 0.25)])
        if plan.roles[roots[c]] == "tentacle":
            ang = np.pi / max(4, len([1 for ch in roots if plan.roles[roots[ch]] == "tentacle"]))
            rot = rotation(Y, ang)
            centre = plan.joints[plan.parents[roots[c]]].astype(np.float64)
            fn = (lambda p, R=rot, o=centre: o + R @ (p - o))
        else:
            rot = None
            fn = (lambda p, sh=shift: p + sh)
        names, parents, pos, roles, chains, segs, sides, hinges = (list(plan.names), list(plan.parents),
                                                                    list(plan.joints), list(plan.roles),
                                                                    list(plan.chains), list(plan.segs),
                                                                    list(plan.sides), list(plan.hinges))
        new_parts = list(plan.parts)
        for ch in group:
            joints = subtree(plan.parents, roots[ch])
            new_pos, copied = _transform_subtree(plan, joints, fn, rot)
            attach_pt = new_pos[joints[0]]
            attach = min(trunk, key=lambda j: float(np.linalg.norm(plan.joints[j] - attach_pt)))
            remap = {}
            for j in joints:
                remap[j] = len(names)
                suffix = ch[len(base):]  # "_l" / "_r" / ""
                new_chain = new_base + suffix
                names.append(plan.names[j].replace(ch, new_chain, 1) if plan.names[j].startswith(ch)
                             else f"{new_chain}_{plan.names[j]}")
                parents.append(attach if j == joints[0] else remap[int(plan.parents[j])])
                pos.append(new_pos[j].astype(np.float32))
                roles.append(plan.roles[j])
                chains.append(plan.chains[j].replace(ch, new_chain, 1))
                segs.append(plan.segs[j])
                sides.append(plan.sides[j])
                h = plan.hinges[j].astype(np.float64)
                hinges.append((h if rot is None else rot @ h).astype(np.float32))
            for p in copied:
                new_parts.append(replace(p, owners=tuple(remap[o] for o in p.owners if o in remap)
                                         or (remap[joints[0]],)))
        if len(set(names)) != len(names):
            return None
        out = replace(plan, names=names, parents=np.asarray(parents, np.int32), joints=np.asarray(pos, np.float32),
                      roles=roles, chains=chains, segs=np.asarray(segs, np.int32), sides=np.asarray(sides, np.int8),
                      hinges=np.asarray(hinges, np.float32), parts=new_parts, mutations=list(plan.mutations))
        if not clearance_violations(out, limit=1):
            out.mutations.append(f"extra {base}")
            return out
    return None


def mutate(plan: BodyPlan, rng: np.random.Generator, max_joints: int) -> BodyPlan:
    """Apply one or two random mutations (extra limb, missing limb, asymmetric proportions).

    A mutation that would exceed ``max_joints`` or make limbs touch in the rest shape is skipped.
    """
    n = 1 + int(rng.random() < 0.3)
    for _ in range(n):
        kind = str(rng.choice(["extra", "missing", "asymmetric"], p=[0.35, 0.3, 0.35]))
        fn = {"extra": _mutate_extra, "missing": _mutate_drop, "asymmetric": _mutate_scale}[kind]
        out = fn(plan, rng)
        if out is None or out.n_joints > max_joints or out.n_joints < 6:
            continue
        if clearance_violations(out, limit=1):
            continue
        plan = out
    return plan


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_body_plan(family: str, rng: np.random.Generator, max_joints: int = 64, min_joints: int = 6,
                    mutation_prob: float = 0.3, size_range: tuple[float, float] = (1.0, 2.0),
                    max_tries: int = 30) -> BodyPlan:
    """Draw a body plan of ``family`` whose longest side lies in ``size_range``.

    Plans whose limbs would touch in the rest shape, or whose joint count falls outside
    ``[min_joints, max_joints]``, are redrawn.

    Raises:
        BodyPlanError: for an unknown family or when no valid plan is found in ``max_tries``.
    """
    if family not in BUILDERS:
        raise BodyPlanError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    last = ""
    variant = None
    for _ in range(max_tries):
        plan = BUILDERS[family](rng, max_joints, variant)
        variant = plan.variant  # redraws keep the variant, so rejections do not skew the mix
        if rng.random() < mutation_prob:
            plan = mutate(plan, rng, max_joints)
        if not (min_joints <= plan.n_joints <= max_joints):
            last = f"{plan.n_joints} joints"
            continue
        longest = max(len(c) - 1 for c in unbranched_chains(plan.parents))
        if longest > MAX_CHAIN_BONES:
            last = f"a chain of {longest} bones"
            continue
        bad = clearance_violations(plan, limit=1)
        if bad:
            a, b_, gap = bad[0]
            last = (f"parts owned by {plan.names[plan.parts[a].owners[0]]} and "
                    f"{plan.names[plan.parts[b_].owners[0]]} overlap by {-gap:.4f}")
            continue
        target = rng.uniform(*size_range)
        lo, hi = _plan_box(plan)
        return plan.scaled(target / float((hi - lo).max()))
    raise BodyPlanError(f"could not build a valid {family} in {max_tries} tries (last problem: {last})")


def unbranched_chains(parents: np.ndarray) -> list[list[int]]:
    """Maximal runs of bones without branching, as joint lists from a branch point (or the root) to
    the next branch point or leaf; ``len(chain) - 1`` is the number of bones."""
    parents = np.asarray(parents)
    kids: list[list[int]] = [[] for _ in parents]
    for j, p in enumerate(parents):
        if p >= 0:
            kids[int(p)].append(j)
    chains = []
    for start in range(len(parents)):
        if parents[start] >= 0 and len(kids[start]) == 1:
            continue  # a pass-through joint lies inside a run
        for first in kids[start]:
            chain = [start, first]
            while len(kids[chain[-1]]) == 1:
                chain.append(kids[chain[-1]][0])
            chains.append(chain)
    return chains


def _plan_box(plan: BodyPlan) -> tuple[np.ndarray, np.ndarray]:
    los, his = zip(*(p.bounds() for p in plan.parts))
    return np.min(los, axis=0), np.max(his, axis=0)
