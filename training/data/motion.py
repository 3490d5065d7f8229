"""Motion clips: per-joint rotations with joint limits, locomotion cycles, root motion, skinning.

Each joint has three rotation channels in degrees, about the axes of :func:`joint_axes`: flex (the
joint's hinge), splay (sideways) and twist (about the bone). A joint's local rotation is

    L = R(splay_axis, splay) @ R(flex_axis, flex) @ R(twist_axis, twist),

expressed in its parent's frame, which coincides with the world frame in the rest pose. A clip is

    angles(k) = clamp(posture + cycle(k) + drift(k), joint limits)

where ``posture`` is a per-creature stance away from the bind pose (knees and elbows bent, arms
lowered, tails curled, snakes in an S), ``cycle`` a locomotion pattern for the family (walk, trot,
gallop, run, flap, slither, crawl, swim) or a sum of sinusoids (``random``), and ``drift`` small
smooth noise. The root follows a path with forward speed, turning and bobbing; walking creatures
are kept on the ground. Every frame, frame 0 included, is at least ``min_pose_deg`` away from the
rest pose (mean rotation of the non-root, non-leaf joints).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .body_plans import BodyPlan, joint_axes, joint_limits, rotation

logger = logging.getLogger(__name__)

# Clip kinds per family / locomotion with their probabilities.
CLIP_KINDS: dict[str, dict[str, float]] = {
    "humanoid": {"walk": 0.35, "run": 0.25, "random": 0.40},
    "quadruped": {"walk": 0.3, "trot": 0.25, "gallop": 0.2, "random": 0.25},
    "dragon": {"walk": 0.25, "gallop": 0.15, "flap": 0.35, "random": 0.25},
    "bird": {"flap": 0.6, "walk": 0.15, "random": 0.25},
    "insect": {"walk": 0.7, "random": 0.3},
    "spider": {"walk": 0.7, "random": 0.3},
    "snake": {"slither": 0.7, "random": 0.3},
    "fish": {"swim": 0.75, "random": 0.25},
    "tentacled": {"crawl": 0.5, "swim": 0.2, "random": 0.3},
}

# Forward speed in body lengths per second.
SPEED = {"walk": (0.2, 0.5), "run": (0.6, 1.2), "trot": (0.5, 0.9), "gallop": (1.0, 1.8), "flap": (0.5, 1.2),
         "slither": (0.1, 0.3), "crawl": (0.05, 0.2), "swim": (0.3, 0.7), "random": (0.0, 0.15)}


@dataclass
class MotionConfig:
    """Clip settings.

    Attributes:
        fps: frames per second.
        min_pose_deg: lower bound on every frame's mean joint rotation away from the rest pose.
        max_turn_deg_s: standard deviation of the root's turning rate (degrees per second).
        drift_deg: amplitude of the smooth per-joint noise added to every clip.
        in_place_prob: share of clips whose root does not travel (cycles played in place, as in
            most game-asset animations).
    """

    fps: float = 30.0
    min_pose_deg: float = 15.0
    max_turn_deg_s: float = 20.0
    drift_deg: float = 4.0
    in_place_prob: float = 0.35


@dataclass
class Clip:
    """A motion of one body plan.

    Attributes:
        kind: the clip kind (``"walk"``, ``"swim"``, ...).
        angles: float64 ``[K, J, 3]`` channel angles in degrees (flex, splay, twist), within limits.
        local_rotations: float64 ``[K, J, 3, 3]`` joint rotations relative to the parent (root: world).
        transforms: float32 ``[K, J, 4, 4]`` rest -> frame ``k`` world transforms (for LBS).
        joints: float32 ``[K, J, 3]`` joint world positions per frame.
        pose_deg: float64 ``[K]`` mean rotation of the non-root, non-leaf joints per frame.
    """

    kind: str
    angles: np.ndarray
    local_rotations: np.ndarray
    transforms: np.ndarray
    joints: np.ndarray
    pose_deg: np.ndarray


# --------------------------------------------------------------------------------------------
# Rotations and kinematics
# --------------------------------------------------------------------------------------------


def axis_angle_matrices(axes: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rodrigues' formula, batched: rotations ``[..., 3, 3]`` about unit ``axes [..., 3]``."""
    a = np.radians(angles_deg)[..., None, None]
    x, y, z = axes[..., 0], axes[..., 1], axes[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2)
    eye = np.broadcast_to(np.eye(3), k.shape)
    return eye + np.sin(a) * k + (1.0 - np.cos(a)) * (k @ k)


def channel_rotations(angles: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Local rotations ``[K, J, 3, 3]`` from channel angles ``[K, J, 3]`` (degrees) and ``axes [J, 3, 3]``.

    ``L = R(splay) @ R(flex) @ R(twist)``.
    """
    K = angles.shape[0]
    ax = np.broadcast_to(axes[None], (K,) + axes.shape)
    flex = axis_angle_matrices(ax[:, :, 0], angles[..., 0])
    splay = axis_angle_matrices(ax[:, :, 1], angles[..., 1])
    twist = axis_angle_matrices(ax[:, :, 2], angles[..., 2])
    return splay @ flex @ twist


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle in degrees of rotation matrices ``[..., 3, 3]``."""
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def articulated_joints(parents: np.ndarray) -> np.ndarray:
    """Boolean ``[J]``: joints that have a parent and at least one child (their rotation moves a bone)."""
    parents = np.asarray(parents)
    has_child = np.zeros(len(parents), dtype=bool)
    has_child[parents[parents >= 0]] = True
    return has_child & (parents >= 0)


def pose_deviation_deg(local_rotations: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Mean rotation angle ``[K]`` (degrees) away from the rest pose over the articulated joints."""
    mask = articulated_joints(parents)
    if not mask.any():
        return np.zeros(local_rotations.shape[0])
    return rotation_angle_deg(local_rotations[:, mask]).mean(axis=1)


def local_rotations_from_transforms(transforms: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Joint rotations relative to the parent ``[K, J, 3, 3]`` from rest->frame transforms ``[K, J, 4, 4]``.

    Valid when the rest frames of all joints are aligned with the world (as in this corpus); the
    root's entry is its world rotation.
    """
    R = np.asarray(transforms, dtype=np.float64)[..., :3, :3]
    out = R.copy()
    child = np.flatnonzero(np.asarray(parents) >= 0)
    out[:, child] = np.swapaxes(R[:, np.asarray(parents)[child]], -1, -2) @ R[:, child]
    return out


def forward_kinematics(rest_joints: np.ndarray, parents: np.ndarray, local_rotations: np.ndarray,
                       root_position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World transforms of a posed skeleton.

    Args:
        rest_joints: ``[J, 3]`` rest positions (rest frames aligned with the world).
        parents: ``[J]``, parents before children.
        local_rotations: ``[K, J, 3, 3]`` rotation of each joint in its parent's frame (root: world).
        root_position: ``[K, 3]`` root joint position per frame.
    Returns:
        ``transforms float64 [K, J, 4, 4]`` (rest -> frame, so that LBS with them poses the rest
        mesh) and ``joints float64 [K, J, 3]``.
    """
    rest = np.asarray(rest_joints, dtype=np.float64)
    K, J = local_rotations.shape[:2]
    world_R = np.empty((K, J, 3, 3))
    pos = np.empty((K, J, 3))
    for j in range(J):
        p = int(parents[j])
        if p < 0:
            world_R[:, j] = local_rotations[:, j]
            pos[:, j] = root_position
        else:
            world_R[:, j] = world_R[:, p] @ local_rotations[:, j]
            pos[:, j] = pos[:, p] + world_R[:, p] @ (rest[j] - rest[p])
    T = np.zeros((K, J, 4, 4))
    T[..., :3, :3] = world_R
    T[..., :3, 3] = pos - np.einsum("kjab,jb->kja", world_R, rest)
    T[..., 3, 3] = 1.0
    return T, pos


# --------------------------------------------------------------------------------------------
# Posture
# --------------------------------------------------------------------------------------------


def _chain_index(plan: BodyPlan) -> tuple[dict[str, list[int]], np.ndarray]:
    """Joints per chain (in order) and each joint's position along its chain (0 at the chain root)."""
    chains: dict[str, list[int]] = {}
    for j, c in enumerate(plan.chains):
        chains.setdefault(c, []).append(j)
    pos = np.zeros(plan.n_joints, dtype=np.int64)
    for js in chains.values():
        for i, j in enumerate(js):
            pos[j] = i
    return chains, pos


def _depth_from_root(plan: BodyPlan) -> np.ndarray:
    d = np.zeros(plan.n_joints, dtype=np.int64)
    for j, p in enumerate(plan.parents):
        if p >= 0:
            d[j] = d[p] + 1
    return d


def sample_posture(plan: BodyPlan, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A stance ``[J, 3]`` (degrees) away from the rest pose, suited to the clip ``kind``."""
    J = plan.n_joints
    P = np.zeros((J, 3))
    chains, along = _chain_index(plan)
    curl = {c: rng.normal() for c in chains}  # one bending tendency per chain, so tails curve evenly
    flying = kind == "flap"
    pos = plan.joints.astype(np.float64)
    kids = plan.children()
    sym = {}  # the same stance for left and right twins, with a little asymmetry
    for j, role in enumerate(plan.roles):
        c = plan.chains[j]
        key = (c[:-2] if c.endswith(("_l", "_r")) else c, along[j])
        if key not in sym:
            sym[key] = rng.normal(size=8)
        z = sym[key] + 0.25 * rng.normal(size=8)
        u = 1.0 / (1.0 + np.exp(-z))  # in (0, 1)
        cc = curl[c]
        if role in ("root", "tip"):
            continue
        if role == "spine":
            P[j] = (8 * z[0], 6 * z[1], 4 * z[2])
        elif role == "neck":
            P[j] = (-25 + 45 * u[0], 12 * z[1], 6 * z[2])
        elif role == "head":
            P[j] = (-20 + 45 * u[0], 15 * z[1], 8 * z[2])
        elif role == "jaw":
            P[j] = (25 * u[0], 0, 0)
        elif role in ("tail", "trunk"):  # an even curl of at most ~70 degrees over the whole tail
            per = min(18.0, 70.0 / max(len(chains[c]) - 1, 1))
            P[j] = (per * cc + 6 * z[0], 0.6 * per * z[1] + 4 * z[3], 5 * z[2])
        elif role == "body":
            P[j] = (6 * z[0], 8 * z[1], 3 * z[2])
        elif role == "leg_root":
            P[j] = (-10 + 40 * u[0], 12 * u[1], 8 * z[2])
            if flying:
                P[j, 0] = 25 + 35 * u[0]
        elif role == "leg_mid":
            P[j] = (10 + 45 * u[0], 0, 3 * z[2])
            if flying:
                P[j, 0] = 40 + 40 * u[0]
        elif role == "leg_low":
            P[j] = (-20 + 50 * u[0], 4 * z[1], 0)
        elif role == "leg_foot":
            P[j] = (-20 + 40 * u[0], 0, 0)
        elif role == "sprawl_root":
            P[j] = (15 * z[0], 8 * z[1], 0)
        elif role == "sprawl_lift":
            P[j] = (-15 + 35 * u[0], 0, 6 * z[2])
        elif role == "sprawl_knee":
            P[j] = (-10 + 45 * u[0], 0, 0)
        elif role == "sprawl_foot":
            P[j] = (-10 + 35 * u[0], 0, 0)
        elif role == "clavicle":
            P[j] = (6 * z[0], 6 * z[1], 0)
        elif role == "shoulder":
            # lower the arm from its bind-pose elevation to hang 30-65 degrees below horizontal
            child = kids[j][0] if kids[j] else j
            d = pos[child] - pos[j]
            elevation = np.degrees(np.arcsin(np.clip(-d[1] / max(np.linalg.norm(d), 1e-9), -1, 1)))
            P[j] = (-15 + 45 * u[0], 30 + 35 * u[1] - elevation, 20 * z[2])
        elif role == "elbow":
            P[j] = (15 + 70 * u[0], 0, 25 * z[2])
        elif role == "wrist":
            P[j] = (-20 + 50 * u[0], 10 * z[1], 10 * z[2])
        elif role == "finger":
            P[j] = (5 + 55 * u[0] * (0.6 + 0.4 * np.tanh(cc)), 5 * z[1], 0)
        elif role == "wing_root":  # flying: spread; otherwise lowered and swept back (negative splay)
            P[j] = (10 * z[0], 10 * z[1], 10 * z[2]) if flying else (-35 + 20 * u[0], -20 - 20 * u[1], 8 * z[2])
        elif role in ("wing_mid", "wing_low"):
            P[j] = (10 * u[0], 0, 0) if flying else (20 + 30 * u[0], 0, 5 * z[2])
        elif role == "abdomen":
            P[j] = (8 * z[0], 6 * z[1], 3 * z[2])
        elif role == "wing_finger":
            P[j] = (10 * z[0], 8 * z[1], 0)
        elif role == "tentacle":
            P[j] = (12 * cc + 12 * z[0], 10 * z[1] + 6 * cc, 6 * z[2])
        elif role in ("ear", "antenna"):
            P[j] = (20 * z[0], 15 * z[1], 8 * z[2])
        elif role == "fin":
            P[j] = (15 * z[0], 10 * z[1], 8 * z[2])
        elif role == "mandible":
            P[j] = (-10 + 30 * u[0], 0, 0)
    return P


# Channel (0 flex, 1 splay, 2 twist) along which a role's stance is pushed when a clip stays too
# close to the rest pose: axial bodies bend sideways, limbs fold.
BOOST_CHANNEL = {"body": 1, "tail": 1, "abdomen": 0, "spine": 0, "neck": 0, "head": 0, "trunk": 0, "tentacle": 0,
                 "jaw": 0, "clavicle": 1, "shoulder": 1}


def boost_directions(plan: BodyPlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per joint the channel ``[J]`` to push and its sign ``[J]`` (one sign per chain, so chains curve evenly)."""
    limits = joint_limits(plan)
    chain_sign = {c: (1.0 if rng.random() < 0.5 else -1.0) for c in set(plan.chains)}
    channel = np.zeros(plan.n_joints, dtype=np.int64)
    sign = np.zeros(plan.n_joints)
    for j, role in enumerate(plan.roles):
        if role in ("root", "tip"):
            continue
        channel[j] = BOOST_CHANNEL.get(role, 0)
        lo, hi = limits[j, channel[j]]
        if lo >= 0 or hi <= 0:  # one-sided joints (knees, elbows, jaws) fold one way
            sign[j] = 1.0 if hi > 0 else -1.0
        else:
            sign[j] = chain_sign[plan.chains[j]]
    return channel, sign


def boost_posture(posture: np.ndarray, limits: np.ndarray, channel: np.ndarray, sign: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Move each joint's stance a random 15-35 % of its remaining room along its boost channel."""
    out = posture.copy()
    J = len(channel)
    idx = np.arange(J)
    current = out[idx, channel]
    room = np.where(sign > 0, limits[idx, channel, 1] - current, current - limits[idx, channel, 0])
    out[idx, channel] = current + sign * rng.uniform(0.15, 0.35, size=J) * np.maximum(room, 0.0)
    return out


# --------------------------------------------------------------------------------------------
# Cycles
# --------------------------------------------------------------------------------------------


def _leg_chains(plan: BodyPlan) -> list[tuple[str, list[int]]]:
    chains, _ = _chain_index(plan)
    return [(c, js) for c, js in chains.items() if plan.roles[js[0]] in ("leg_root", "sprawl_root")]


def _gait_phases(plan: BodyPlan, legs: list[tuple[str, list[int]]], step: float,
                 side_offset: float) -> dict[str, float]:
    """Phase in [0, 1) per leg chain: pairs ordered front to back advance by ``step``; right legs by ``side_offset``."""
    zs = sorted({round(float(plan.joints[js[0], 2]), 3) for _, js in legs}, reverse=True)
    out = {}
    for c, js in legs:
        pair = zs.index(round(float(plan.joints[js[0], 2]), 3))
        right = plan.sides[js[0]] < 0
        out[c] = (pair * step + (side_offset if right else 0.0)) % 1.0
    return out


GAITS = {  # step between leg pairs, right-side offset, frequency (Hz), swing / lift amplitudes (deg)
    "walk": dict(step=0.75, side=0.5, freq=(0.8, 1.2), swing=(15, 25), lift=(20, 40)),
    "trot": dict(step=0.5, side=0.5, freq=(1.4, 1.9), swing=(20, 30), lift=(30, 50)),
    "gallop": dict(step=0.55, side=0.1, freq=(1.9, 2.5), swing=(28, 40), lift=(40, 60)),
    "run": dict(step=0.5, side=0.5, freq=(1.2, 1.6), swing=(30, 42), lift=(55, 85)),
}


def add_cycle(angles: np.ndarray, plan: BodyPlan, kind: str, t: np.ndarray, rng: np.random.Generator) -> dict:
    """Add the locomotion pattern ``kind`` to ``angles [K, J, 3]`` in place; returns root-motion hints."""
    J = plan.n_joints
    chains, along = _chain_index(plan)
    depth = _depth_from_root(plan)
    hints = {"bob": 0.0, "freq": 1.0, "pitch": 0.0, "roll": 0.0}
    legs = _leg_chains(plan)
    many_legs = len(legs) > 4
    if kind in ("walk", "trot", "gallop", "run") and legs:
        g = dict(GAITS[kind])
        if many_legs:  # insects / spiders: tripod or alternating tetrapod, faster
            g.update(step=0.5, side=0.5, freq=(1.4, 2.6), swing=(12, 22), lift=(15, 30))
        elif len(legs) <= 2:
            g.update(step=0.5, side=0.5)
        f = rng.uniform(*g["freq"])
        swing, lift = rng.uniform(*g["swing"]), rng.uniform(*g["lift"])
        phases = _gait_phases(plan, legs, g["step"], g["side"])
        leg_phase = {}
        for c, js in legs:
            phi = 2 * np.pi * (f * t + phases[c])  # [K]
            leg_phase[c] = phi
            for j in js:
                role = plan.roles[j]
                if role in ("leg_root", "sprawl_root"):
                    angles[:, j, 0] += swing * np.sin(phi)
                elif role in ("leg_mid", "sprawl_lift"):
                    angles[:, j, 0] += lift * np.maximum(0.0, np.cos(phi)) ** 1.3
                elif role in ("leg_low", "sprawl_knee"):
                    angles[:, j, 0] += 0.5 * lift * np.maximum(0.0, np.cos(phi - 0.5)) - 0.15 * swing * np.sin(phi)
                elif role in ("leg_foot", "sprawl_foot"):
                    angles[:, j, 0] += 0.3 * lift * np.maximum(0.0, np.cos(phi - 1.0))
        # arms swing against the legs of the same side
        for c, js in chains.items():
            if plan.roles[js[0]] in ("clavicle", "shoulder"):
                side_legs = [lc for lc, ljs in legs if plan.sides[ljs[0]] == plan.sides[js[0]]]
                phi = leg_phase[side_legs[0]] if side_legs else 2 * np.pi * f * t
                for j in js:
                    if plan.roles[j] == "shoulder":
                        angles[:, j, 0] -= 0.8 * swing * np.sin(phi)
                    elif plan.roles[j] == "elbow":
                        angles[:, j, 0] += (25 if kind == "run" else 8) + 8 * np.sin(phi + 0.5)
        # trunk: gallop flexes the spine, walks sway it; tails and necks follow
        for j in range(J):
            role = plan.roles[j]
            base = 2 * np.pi * f * t
            if role == "spine":
                if kind == "gallop":
                    angles[:, j, 0] += rng.uniform(6, 10) * np.sin(base)
                else:
                    angles[:, j, 1] += 3 * np.sin(base)
            elif role in ("tail", "abdomen"):
                angles[:, j, 1] += (6 + 3 * along[j]) * np.sin(base - 0.7 * along[j])
                angles[:, j, 0] += 4 * np.sin(2 * base - 0.7 * along[j])
            elif role in ("neck", "head"):
                angles[:, j, 0] += (4 if kind != "gallop" else 8) * np.sin(2 * base + 1.0)
            elif role in ("ear", "antenna"):
                angles[:, j, 0] += 8 * np.sin(2 * base - along[j])
        hints.update(bob=0.015 if kind != "gallop" else 0.03, freq=f, pitch=3.0 if kind == "gallop" else 1.0, roll=2.0)
    elif kind == "flap":
        f = rng.uniform(2.0, 3.5) if plan.family != "dragon" else rng.uniform(1.0, 1.6)
        amp = rng.uniform(30, 50)
        phi = 2 * np.pi * f * t
        for j, role in enumerate(plan.roles):
            if role == "wing_root":
                angles[:, j, 0] += amp * np.sin(phi)
                angles[:, j, 2] += 10 * np.cos(phi)
            elif role in ("wing_mid", "wing_low"):
                angles[:, j, 0] += 0.35 * amp * np.maximum(0.0, -np.sin(phi - 0.6))
            elif role == "wing_finger":
                angles[:, j, 0] += 8 * np.sin(phi - 1.0)
            elif role in ("tail", "neck", "head"):
                angles[:, j, 0] += 4 * np.sin(phi + 1.5)
        hints.update(bob=0.03, freq=f, pitch=3.0)
    elif kind in ("slither", "swim", "crawl") and plan.family in ("snake", "fish"):
        axial = [j for j in range(J) if plan.roles[j] in ("body", "tail", "spine", "neck")]
        n_ax = max(len(axial), 1)
        lam = rng.uniform(6, 16) if plan.family == "snake" else n_ax * rng.uniform(0.9, 1.6)
        f = rng.uniform(0.5, 1.0) if plan.family == "snake" else rng.uniform(1.0, 2.2)
        lateral = plan.variant != "worm" and plan.variant != "caterpillar"
        if plan.family == "snake":
            A = float(np.clip(rng.uniform(250, 400) / lam, 18, 40)) * (1.0 if lateral else 0.6)
        else:
            A = rng.uniform(15, 30)
        n_max = max(int(depth[axial].max()), 1) if axial else 1
        for j in axial:
            s = depth[j]
            grow = 1.0 if plan.family == "snake" else 0.35 + 0.65 * (s / n_max) ** 1.5
            wave = A * grow * np.sin(2 * np.pi * (f * t - s / lam))
            angles[:, j, 1 if lateral else 0] += wave
        for j, role in enumerate(plan.roles):
            if role == "fin":
                angles[:, j, 0] += 15 * np.sin(2 * np.pi * f * t + along[j] + j)
            elif role == "head" and plan.family == "snake":
                angles[:, j, 1] -= 0.5 * A * np.sin(2 * np.pi * f * t)
        hints.update(freq=f)
    elif kind in ("crawl", "swim") and plan.family == "tentacled":
        f = rng.uniform(0.5, 1.2)
        amp = rng.uniform(15, 30)
        arms = [(c, js) for c, js in chains.items() if plan.roles[js[0]] == "tentacle"]
        for a, (c, js) in enumerate(arms):
            off = 0.0 if kind == "swim" else a / max(len(arms), 1)
            for i, j in enumerate(js):
                phi = 2 * np.pi * (f * t + off) - 0.8 * i
                angles[:, j, 0] += amp * np.sin(phi)
                if kind == "crawl":
                    angles[:, j, 1] += 0.6 * amp * np.cos(phi)
        hints.update(freq=f, bob=0.03 if kind == "swim" else 0.0)
    else:
        kind = "random"
    if kind == "random":
        add_random_motion(angles, plan, t, rng, scale=rng.uniform(0.12, 0.3))
    return hints


def add_random_motion(angles: np.ndarray, plan: BodyPlan, t: np.ndarray, rng: np.random.Generator,
                      scale: float) -> None:
    """Add per-joint sums of three sinusoids; amplitudes are ``scale`` times each channel's range."""
    limits = joint_limits(plan)
    span = limits[:, :, 1] - limits[:, :, 0]  # [J, 3]
    J = plan.n_joints
    freqs = rng.uniform(0.15, 1.0, size=(3, J, 3))
    phases = rng.uniform(0, 2 * np.pi, size=(3, J, 3))
    amps = rng.dirichlet(np.ones(3), size=(J, 3)).transpose(2, 0, 1) * scale * span[None]
    root = plan.parents < 0
    amps[:, root] = 0.0
    for m in range(3):
        angles += amps[m][None] * np.sin(2 * np.pi * freqs[m][None] * t[:, None, None] + phases[m][None])


def smooth_noise(K: int, shape: tuple[int, ...], rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Smooth noise ``[K, *shape]`` in [-1, 1]: two slow sinusoids with random frequency and phase."""
    out = np.zeros((K,) + shape)
    for _ in range(2):
        f = rng.uniform(0.1, 0.8, size=shape)
        ph = rng.uniform(0, 2 * np.pi, size=shape)
        out += 0.5 * np.sin(2 * np.pi * f[None] * t.reshape((K,) + (1,) * len(shape)) + ph[None])
    return out


# --------------------------------------------------------------------------------------------
# Root path
# --------------------------------------------------------------------------------------------


def root_motion(plan: BodyPlan, kind: str, t: np.ndarray, rng: np.random.Generator, hints: dict,
                config: MotionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Root rotations ``[K, 3, 3]`` and positions ``[K, 3]``: heading, turning, pitch/roll, bobbing, travel."""
    K = len(t)
    size = plan.extent()
    yaw0 = rng.uniform(-30, 30)
    turn = rng.normal(0.0, config.max_turn_deg_s)
    yaw = yaw0 + turn * t + 6 * smooth_noise(K, (), rng, t)
    f = hints.get("freq", 1.0)
    pitch = hints.get("pitch", 0.0) * np.sin(2 * np.pi * 2 * f * t) + 3 * smooth_noise(K, (), rng, t)
    roll = hints.get("roll", 0.0) * np.sin(2 * np.pi * f * t) + 2 * smooth_noise(K, (), rng, t)
    if kind == "random":
        pitch = pitch + rng.uniform(-8, 8)
        roll = roll + rng.uniform(-5, 5)
    R = axis_angle_matrices(np.broadcast_to([0.0, 1.0, 0.0], (K, 3)), yaw) @ \
        axis_angle_matrices(np.broadcast_to([1.0, 0.0, 0.0], (K, 3)), pitch) @ \
        axis_angle_matrices(np.broadcast_to([0.0, 0.0, 1.0], (K, 3)), roll)
    speed = rng.uniform(*SPEED.get(kind, (0.0, 0.15))) * size
    if rng.random() < config.in_place_prob:
        speed, turn = 0.0, 0.0
        yaw = yaw0 + 6 * smooth_noise(K, (), rng, t)
    heading = np.stack([np.sin(np.radians(yaw)), np.zeros(K), np.cos(np.radians(yaw))], axis=1)
    dt = np.diff(t, prepend=t[0])
    path = np.cumsum(heading * (speed * dt)[:, None], axis=0)
    bob = hints.get("bob", 0.0) * size * np.sin(2 * np.pi * 2 * f * t)
    pos = plan.joints[plan.parents < 0][0].astype(np.float64) + path + np.stack([np.zeros(K), bob, np.zeros(K)], 1)
    return R, pos


def _ground_shift(plan: BodyPlan, joints: np.ndarray) -> np.ndarray:
    """Vertical shift ``[K]`` that keeps the lowest contact joint at its rest height."""
    contact = [j for j, r in enumerate(plan.roles) if r == "tip"]
    if not contact:
        contact = list(range(plan.n_joints))
    rest_low = float(plan.joints[contact, 1].min())
    return rest_low - joints[:, contact, 1].min(axis=1)


# --------------------------------------------------------------------------------------------
# Clip
# --------------------------------------------------------------------------------------------


def choose_kind(plan: BodyPlan, rng: np.random.Generator) -> str:
    kinds = dict(CLIP_KINDS[plan.family])
    if plan.family == "bird" and plan.locomotion != "fly":
        kinds = {"walk": 0.6, "random": 0.4}
    if plan.family == "tentacled" and plan.variant == "jellyfish":
        kinds = {"swim": 0.7, "random": 0.3}
    if plan.family == "insect" and any(r == "wing_root" for r in plan.roles):
        kinds = {"walk": 0.5, "flap": 0.25, "random": 0.25}
    if not _leg_chains(plan):
        for k in ("walk", "trot", "gallop", "run"):
            kinds.pop(k, None)
    if not any(r == "wing_root" for r in plan.roles):
        kinds.pop("flap", None)
    if not kinds:
        kinds = {"random": 1.0}
    names = list(kinds)
    p = np.asarray([kinds[k] for k in names])
    return str(rng.choice(names, p=p / p.sum()))


def make_clip(plan: BodyPlan, n_frames: int, rng: np.random.Generator, config: MotionConfig | None = None,
              kind: str | None = None) -> Clip:
    """Generate a ``n_frames``-frame clip for ``plan``.

    The stance is pushed further from the rest pose (within limits) until every frame's mean
    joint rotation is at least ``config.min_pose_deg``.
    """
    config = config or MotionConfig()
    kind = kind or choose_kind(plan, rng)
    K = int(n_frames)
    t = np.arange(K) / config.fps + rng.uniform(0, 2.0)  # start anywhere in the cycle
    J = plan.n_joints
    axes = joint_axes(plan)
    limits = joint_limits(plan)
    posture = sample_posture(plan, rng, kind)
    motion = np.zeros((K, J, 3))
    hints = add_cycle(motion, plan, kind, t, rng)
    motion += config.drift_deg * smooth_noise(K, (J, 3), rng, t)
    motion[:, plan.parents < 0] = 0.0
    root_R, root_pos = root_motion(plan, kind, t, rng, hints, config)
    lo, hi = limits[None, :, :, 0], limits[None, :, :, 1]
    channel, sign = boost_directions(plan, rng)

    for attempt in range(12):
        angles = np.clip(posture[None] + motion, lo, hi)
        local = channel_rotations(angles, axes)
        local[:, plan.parents < 0] = root_R[:, None]
        dev = pose_deviation_deg(local, plan.parents)
        if dev.min() >= config.min_pose_deg:
            break
        posture = boost_posture(posture, limits, channel, sign, rng)
    else:
        raise RuntimeError(f"could not pose {plan.family} {min(dev):.1f} deg away from rest "
                           f"(needs {config.min_pose_deg})")
    T, joints = forward_kinematics(plan.joints, plan.parents, local, root_pos)
    if plan.locomotion in ("walk", "slither") and kind != "flap":
        shift = _ground_shift(plan, joints)
        T[:, :, 1, 3] += shift[:, None]
        joints[:, :, 1] += shift[:, None]
    return Clip(kind=kind, angles=angles, local_rotations=local, transforms=T.astype(np.float32),
                joints=joints.astype(np.float32), pose_deg=dev)


# --------------------------------------------------------------------------------------------
# Secondary motion
# --------------------------------------------------------------------------------------------


def secondary_displacement(rest_verts: np.ndarray, softness: np.ndarray, n_frames: int, amplitude: float,
                           rng: np.random.Generator, fps: float = 30.0) -> np.ndarray:
    """Small non-rigid wobble ``[K, V, 3]`` whose length never exceeds ``amplitude``.

    A few travelling Fourier modes of rest-space position and time, scaled per vertex by
    ``softness [V]`` in [0, 1] (flesh far from the bones moves most).
    """
    rest = np.asarray(rest_verts, dtype=np.float64)
    size = float(np.ptp(rest, axis=0).max())
    t = np.arange(n_frames) / fps
    n_modes = 3
    weights = rng.dirichlet(np.ones(n_modes))  # sum to 1, so the field's length is at most 1
    out = np.zeros((n_frames, len(rest), 3))
    for m in range(n_modes):
        k = rng.normal(size=3)
        k *= 2 * np.pi / (size * rng.uniform(0.2, 0.5)) / np.linalg.norm(k)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        f = rng.uniform(1.0, 3.0)
        phase = rest @ k  # [V]
        out += weights[m] * np.sin(phase[None] + 2 * np.pi * f * t[:, None] + rng.uniform(0, 2 * np.pi))[..., None] \
            * direction
    return (amplitude * np.clip(softness, 0.0, 1.0)[None, :, None] * out).astype(np.float32)


__all__ = [
    "Clip", "MotionConfig", "make_clip", "forward_kinematics", "channel_rotations", "pose_deviation_deg",
    "local_rotations_from_transforms", "articulated_joints", "rotation_angle_deg", "secondary_displacement",
    "rotation",
]
