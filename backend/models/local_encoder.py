"""Local point encoder, dense joint votes and joint proposals for the ``local`` skeleton generator design.

The ``perceiver`` design squeezes the 512 surface points through 64 latent tokens and learns 128-bin
joint coordinates from the joint tokens alone (a few dozen labels per frame). This module gives the
generator per-point supervision and a geometric prior instead:

1. :class:`LocalPointEncoder` -- edge convolutions over each point's k nearest neighbours (DGCNN-style,
   rewritten so the ``[B, N, k, d_edge]`` edge tensor is only gathered and max-pooled, see
   :class:`EdgeConv`), a global max-pooled context, optional full self-attention over the points, and a
   dense head that predicts for every point its offsets to its ``K`` nearest joints and the distances
   to them (``K = votes_per_point``; with ``K > 1`` joints that are nobody's nearest -- deep inside, or
   between closer joints -- still get votes).
2. :func:`joint_proposals` -- the points moved by their predicted offsets collapse onto the joints;
   a deterministic density-peak clustering of the moved points gives joint proposals.
3. :func:`coordinate_prior` -- for each coordinate token, the log-density of the proposals that are
   still uncovered by earlier joints, marginalised to that axis and conditioned on the joint's
   coordinates already emitted (x, then y given x, then z given x and y). The generator adds it,
   scaled, to its learned bin logits, so a coordinate token only has to learn a correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from backend.models.layers import PointEmbedding, SelfBlock


@dataclass
class PointContext:
    """What the local encoder gives the decoder for a batch of frames.

    Attributes:
        features: float ``[B, N, d]`` per-point features (the decoder's cross-attention memory).
        offsets: float ``[B, N, K, 3]`` predicted offsets from each point to its ``K`` nearest joints
            (nearest first).
        distances: float ``[B, N, K]`` predicted distances to them (>= 0).
        proposals: float ``[B, P, 3]`` joint proposals (normalized coordinates; detached).
        proposal_weight: float ``[B, P]`` 1 for a real proposal, 0 for padding.
        memory: float ``[B, M, d]`` the features the decoder cross-attends to (``M <= N`` points).
    """

    features: torch.Tensor
    offsets: torch.Tensor
    distances: torch.Tensor
    proposals: torch.Tensor
    proposal_weight: torch.Tensor
    memory: torch.Tensor


def knn_indices(xyz: torch.Tensor, k: int) -> torch.Tensor:
    """Indices int64 ``[B, N, k]`` of the ``k`` nearest points (the point itself included) of ``xyz [B, N, 3]``."""
    k = min(k, xyz.shape[1])
    d2 = torch.cdist(xyz, xyz)
    return d2.topk(k, dim=-1, largest=False).indices


def gather_neighbours(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Features ``[B, N, k, C]`` of the neighbours ``idx [B, N, k]`` of ``x [B, N, C]``."""
    B, N, k = idx.shape
    C = x.shape[-1]
    flat = (idx + N * torch.arange(B, device=idx.device)[:, None, None]).reshape(-1)
    return x.reshape(B * N, C).index_select(0, flat).view(B, N, k, C)  # backward: index_add (cheaper than scatter)


class EdgeConv(nn.Module):
    """DGCNN edge convolution with one linear layer: ``h_i' = h_i + W_o ReLU(max_j [A h_i + B (h_j - h_i)])``.

    ``A h_i + B (h_j - h_i) = (A - B) h_i + B h_j`` and ReLU is monotone, so the maximum over the k
    nearest neighbours j moves onto the per-point projections: ``ReLU((A - B) h_i + max_j B h_j)``.
    No ``[B, N, k, ...]`` tensor is multiplied or activated, only gathered (``d_edge`` channels) and
    max-pooled -- the same function at a fraction of the cost.
    """

    def __init__(self, d_model: int, d_edge: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.center = nn.Linear(d_model, d_edge)
        self.neigh = nn.Linear(d_model, d_edge, bias=False)
        self.out = nn.Linear(d_edge, d_model)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        edge = self.center(h) + gather_neighbours(self.neigh(h), idx).max(dim=2).values  # [B, N, d_edge]
        return x + self.out(F.relu(edge))


class LocalPointEncoder(nn.Module):
    """Oriented points ``[B, N, 6]`` -> per-point features ``[B, N, d]``, offsets ``[B, N, K, 3]`` and
    distances ``[B, N, K]`` to the ``K = votes_per_point`` nearest joints."""

    def __init__(self, d_model: int, n_heads: int, n_edge_layers: int, n_attn_layers: int, knn: int,
                 n_freq: int = 8, mlp_ratio: int = 4, dropout: float = 0.0, d_edge: int = 64,
                 votes_per_point: int = 1):
        super().__init__()
        self.knn = knn
        self.votes_per_point = votes_per_point
        self.embed = PointEmbedding(d_model, n_freq)
        self.edges = nn.ModuleList([EdgeConv(d_model, d_edge) for _ in range(n_edge_layers)])
        self.global_proj = nn.Linear(2 * d_model, d_model)
        self.attn = nn.ModuleList([SelfBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_attn_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.dense_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                        nn.Linear(d_model, 4 * votes_per_point))

    def forward(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.features(pts)
        return (x, *self.votes(x))

    def features(self, pts: torch.Tensor) -> torch.Tensor:
        """Per-point features ``[B, N, d]`` of oriented points ``pts [B, N, 6]`` (everything but the dense head)."""
        xyz = pts[..., :3]
        idx = knn_indices(xyz, self.knn)
        x = self.embed(pts)
        for layer in self.edges:
            x = layer(x, idx)
        glob = x.amax(dim=1, keepdim=True).expand_as(x)
        x = x + self.global_proj(torch.cat([x, glob], dim=-1))
        for layer in self.attn:
            x = layer(x)
        return self.norm(x)

    def votes(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense head: offsets float32 ``[B, N, K, 3]`` to the ``K`` nearest joints and their distances
        ``[B, N, K]`` from per-point ``features [B, N, d]``."""
        dense = self.dense_head(features).float().unflatten(-1, (self.votes_per_point, 4))  # [B, N, K, 4]
        return dense[..., :3], F.softplus(dense[..., 3])


@dataclass
class ProposalConfig:
    """Density-peak clustering of the moved points.

    Attributes:
        bandwidth: Gaussian kernel width of the density (normalized units).
        radius: points closer than this to a peak belong to it (its proposal is their weighted mean).
        radius_scale: adaptive radius: a peak takes the points within ``radius_scale`` times the mean
            predicted joint distance of the votes within ``radius`` of it (clipped to
            ``[radius, max_radius]``): where joints lie far apart (a snake's body), the votes of the
            points between them smear along the bone and one joint is still one proposal; 0: ``radius``.
        max_radius: upper bound of the adaptive radius.
        weight_scale: a point's vote weight is ``exp(-distance / weight_scale)`` (near points vote more).
        min_mass: a peak needs at least this much vote weight among its members.
        max_proposals: at most this many proposals per frame.
    """

    bandwidth: float = 0.01
    radius: float = 0.02
    radius_scale: float = 0.0
    max_radius: float = 0.15
    weight_scale: float = 0.1
    min_mass: float = 1.0
    max_proposals: int = 64


@torch.no_grad()
def joint_proposals(points: torch.Tensor, offsets: torch.Tensor, distances: torch.Tensor,
                    cfg: ProposalConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint proposals from the points moved by their offsets (deterministic density peaks).

    Repeatedly: take the unassigned moved point of highest weighted density (ties: lowest index),
    make the weighted mean of the unassigned points within ``cfg.radius`` of it (or the adaptive
    radius, ``cfg.radius_scale``) a proposal if their weight reaches ``cfg.min_mass``, and mark them
    assigned.

    Args:
        points: float ``[B, N, 3]``; offsets: float ``[B, N, K, 3]``; distances: float ``[B, N, K]``
            (``K`` votes per point; every vote is one moved point).
    Returns:
        ``proposals float32 [B, P, 3]`` and ``weight float32 [B, P]`` (1 real, 0 padding), with
        ``P = cfg.max_proposals``; real proposals come first, in order of decreasing density.
    """
    moved = (points[:, :, None] + offsets).float().flatten(1, 2)  # [B, N K, 3]
    dist = distances.float().clamp_min(0).flatten(1)  # [B, N K]
    w = torch.exp(-dist / cfg.weight_scale)  # [B, N K]
    B, N, _ = moved.shape
    d2 = torch.cdist(moved, moved).square()  # [B, N, N]
    density = (torch.exp(-d2 / (2 * cfg.bandwidth ** 2)) * w[:, None, :]).sum(-1)  # [B, N]
    member = d2 < cfg.radius ** 2  # [B, N, N]
    free = torch.ones(B, N, dtype=torch.bool, device=moved.device)
    P = cfg.max_proposals
    proposals = moved.new_zeros(B, P, 3)
    weight = moved.new_zeros(B, P)
    rows = torch.arange(B, device=moved.device)
    for p in range(P):
        score = torch.where(free, density, torch.full_like(density, -1.0))
        peak = score.argmax(dim=1)  # first maximum: deterministic
        alive = score[rows, peak] > 0
        if not bool(alive.any()):
            break
        take = member[rows, peak] & free & alive[:, None]  # [B, N]
        if cfg.radius_scale > 0:
            near_w = w * take
            spread = (dist * near_w).sum(-1) / near_w.sum(-1).clamp_min(1e-9)  # [B]
            r = (cfg.radius_scale * spread).clamp(min=cfg.radius, max=max(cfg.radius, cfg.max_radius))
            take = (d2[rows, peak] < r[:, None].square()) & free & alive[:, None]
        mass = (w * take).sum(-1)
        centre = (moved * (w * take)[..., None]).sum(1) / mass.clamp_min(1e-9)[:, None]
        ok = alive & (mass >= cfg.min_mass)
        proposals[:, p] = torch.where(ok[:, None], centre, proposals[:, p])
        weight[:, p] = ok.float()
        free &= ~take
        free[rows, peak] &= ~alive
    order = torch.argsort(-weight, dim=1, stable=True)  # real proposals first, density order kept
    return proposals.gather(1, order[..., None].expand(-1, -1, 3)), weight.gather(1, order)


def count_features(features: torch.Tensor, distances: torch.Tensor, n_candidates: torch.Tensor,
                   max_joints: int) -> torch.Tensor:
    """What :class:`JointCountHead` sees of a frame: the per-point features ``[B, N, d]`` mean- and
    max-pooled, the mean and spread of the points' predicted distance to their nearest joint
    (``distances [B, N, K]``), and the number of candidate proposals ``n_candidates [B]`` over
    ``max_joints``. Returns float ``[B, 2 d + 3]``."""
    near = distances[..., 0].float()
    return torch.cat([features.float().mean(1), features.float().amax(1), near.mean(1, keepdim=True),
                      near.std(1, keepdim=True), n_candidates.float()[:, None] / max_joints], dim=1)


class JointCountHead(nn.Module):
    """The number of joints of a frame, ``exp(w . count_features + b)``: a linear map fitted in closed form
    (ridge regression on the log joint count, ``training/count_head.py``) after pretraining, on the frozen
    encoder. The votes alone miscount in both directions (a snake's smeared votes over-count, a hand's merged
    ones under-count); pooled features know what kind of creature it is."""

    def __init__(self, d_model: int):
        super().__init__()
        self.linear = nn.Linear(2 * d_model + 3, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``count_features [B, 2 d + 3]`` -> predicted joint count float ``[B]`` (> 0)."""
        return self.linear(features.float())[:, 0].clamp(max=10.0).exp()


def coordinate_prior(tokens: torch.Tensor, proposals: torch.Tensor, proposal_weight: torch.Tensor,
                     n_disc: int, log_sigma: torch.Tensor, cover_sigma: float, floor: float = 1e-3,
                     first_position: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposal prior for every position of a token stream (the decoder's position ``i`` predicts token ``i + 1``).

    Position ``4 j + s`` predicts slot ``s`` of joint ``j`` (0..2: x, y, z; 3: parent). A proposal's
    mass for joint ``j`` is its weight times ``1 - max_{j' < j} exp(-|q - c_j'|^2 / 2 cover_sigma^2)``
    (``c_j'`` the bin centres of the earlier joints), so proposals already used fade out. The x prior
    is the mixture of the remaining proposals' x (Gaussian of width ``sigma_x``) over the bin centres;
    the y prior weights each proposal by the kernel between its x and the joint's emitted x; the z
    prior by both.

    Args:
        tokens: int64 ``[B, L]`` (BOS first); coordinate tokens must be bins where they matter.
        proposals: float ``[B, P, 3]``; proposal_weight: float ``[B, P]``.
        n_disc: coordinate bins.
        log_sigma: float ``[3]`` log kernel widths (normalized units) for the x, y, z slots.
        cover_sigma: width of the coverage kernel.
        floor: uniform mass mixed in (so no bin has zero prior).
        first_position: only positions ``first_position .. L - 1`` are returned (incremental decoding).
    Returns:
        ``log_prior float32 [B, L', n_disc]``: ``log(n_disc * prior)``, the log-ratio of the normalized
        prior to the uniform one (0 everywhere without proposals, and at parent positions), and
        ``uncovered float32 [B, L']``: the fraction of the proposal weight not yet covered (at joint
        starts; 1 elsewhere and in frames without proposals), for the ``L' = L - first_position``
        returned positions.
    """
    B, L = tokens.shape
    device = tokens.device
    J = (L + 3) // 4  # joints whose slots start inside the stream
    centres = (torch.arange(n_disc, device=device, dtype=torch.float32) + 0.5) / n_disc - 0.5
    # coordinates of every joint from its tokens: joint j's slot s sits at position 1 + 4 j + s
    padded = F.pad(tokens, (0, 4 * J + 1 - L), value=n_disc)
    body = padded[:, 1:1 + 4 * J].view(B, J, 4)[..., :3]
    is_bin = body < n_disc
    coords = centres[body.clamp(0, n_disc - 1)]  # [B, J, 3]
    joint_valid = is_bin.all(-1).float()  # [B, J]
    q = proposals.float()
    wq = proposal_weight.float()
    d2 = (coords[:, :, None] - q[:, None]).square().sum(-1)  # [B, J, P]
    near = torch.exp(-d2 / (2 * cover_sigma ** 2)) * joint_valid[..., None]
    covered = torch.cummax(near, dim=1).values  # joints 0..j
    covered = F.pad(covered, (0, 0, 1, 0))[:, :J]  # joints 0..j-1
    mass = wq[:, None] * (1 - covered)  # [B, J, P]
    sig = log_sigma.float().exp()

    def axis_kernel(value: torch.Tensor, axis: int) -> torch.Tensor:  # value [B, J, ...] vs proposals' axis
        return torch.exp(-(value - q[:, None, :, axis]).square() / (2 * sig[axis] ** 2))

    kx = axis_kernel(coords[..., 0:1], 0)  # [B, J, P]: joint's emitted x vs proposal x
    ky = axis_kernel(coords[..., 1:2], 1)
    j0 = first_position // 4
    slot_mass = torch.stack([mass, mass * kx, mass * kx * ky], dim=2)[:, j0:]  # [B, J - j0, 3, P]
    bins_k = torch.stack([torch.exp(-(centres[:, None] - q[:, None, :, a]).square() / (2 * sig[a] ** 2))
                          for a in range(3)], dim=1)  # [B, 3, n_disc, P]
    density = torch.einsum("bjsp,bsnp->bjsn", slot_mass, bins_k)  # [B, J, 3, n_disc]
    total = density.sum(-1, keepdim=True)
    prob = (density + floor * total.clamp_min(1e-6) / n_disc + 1e-12)
    log_prior = (prob * n_disc / prob.sum(-1, keepdim=True)).log()  # relative to uniform: no information -> 0
    Jn = J - j0
    log_prior = torch.cat([log_prior, log_prior.new_zeros(B, Jn, 1, n_disc)], dim=2).view(B, 4 * Jn, n_disc)
    total_w = wq.sum(-1, keepdim=True)
    uncovered = torch.where(total_w > 0, mass[:, j0:].sum(-1) / total_w.clamp_min(1e-6), 1.0)  # [B, Jn]
    uncovered = F.pad(uncovered[..., None], (0, 3), value=1.0).view(B, 4 * Jn)
    cut = slice(first_position - 4 * j0, L - 4 * j0)
    return log_prior[:, cut], uncovered[:, cut]


def prior_log_sigma_init(sigma: float) -> torch.Tensor:
    """Initial ``log_sigma [3]`` for :func:`coordinate_prior`."""
    return torch.full((3,), math.log(sigma))


def joint_vote_targets(points: torch.Tensor, joints: torch.Tensor, joint_valid: torch.Tensor,
                       votes_per_point: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense-head targets: each point's offsets to its ``K`` nearest ground-truth joints and the distances.

    Args:
        points: float ``[B, N, 3]``; joints: float ``[B, J, 3]`` (padded); joint_valid: bool ``[B, J]``.
        votes_per_point: ``K``; a frame with fewer valid joints repeats its farthest one.
    Returns:
        ``offsets float32 [B, N, K, 3]`` and ``distances float32 [B, N, K]``, nearest first.
    Raises:
        ValueError: a frame without any valid joint.
    """
    if not bool(joint_valid.any(-1).all()):
        raise ValueError("joint_vote_targets: every frame needs at least one valid joint")
    d2 = torch.cdist(points.float(), joints.float()).square()
    d2 = d2.masked_fill(~joint_valid[:, None, :], float("inf"))
    K = min(votes_per_point, joints.shape[1])
    order = d2.topk(K, dim=-1, largest=False).indices  # [B, N, K]
    n_valid = joint_valid.sum(-1)  # [B]
    slot = torch.minimum(torch.arange(votes_per_point, device=points.device)[None], n_valid[:, None] - 1)  # [B, K']
    nearest = order.gather(2, slot[:, None, :].expand(-1, order.shape[1], -1))  # [B, N, K']
    B, N, Kp = nearest.shape
    target = joints.float().gather(1, nearest.reshape(B, N * Kp, 1).expand(-1, -1, 3)).view(B, N, Kp, 3)
    offsets = target - points.float()[:, :, None]
    return offsets, offsets.norm(dim=-1)


def joint_vote_loss(offsets: torch.Tensor, distances: torch.Tensor, target_offsets: torch.Tensor,
                    target_distances: torch.Tensor, scale: float = 0.02) -> torch.Tensor:
    """Dense-head loss: mean over points and votes of ``(|offset error|_1 + |distance error|) / scale``.

    Args:
        offsets, target_offsets: float ``[B, N, K, 3]``; distances, target_distances: float ``[B, N, K]``.
        scale: error (normalized units) that costs 1 (about 2.5 coordinate bins).
    Returns:
        scalar loss.
    """
    err = (offsets.float() - target_offsets).abs().sum(-1) + (distances.float() - target_distances).abs()
    return err.mean() / scale


class ProposalPointer:
    """Decoding that points at joint proposals: each decoded joint is one unused proposal, up to a
    residual of ``residual`` bins per axis, so joint coordinates come from the dense votes and the
    decoder chooses which proposal comes next, its exact bins within the residual, its parent, and
    when to stop.

    Used by :meth:`~backend.models.skeleton_generator.SkeletonGenerator.generate` as a mask on the
    coordinate slots: x may take the bins near an unused proposal's x; y those near the y of a
    proposal whose x matched; z likewise. When a joint's z is emitted, the matching proposal nearest
    to the emitted bins is used up. Once every proposal is used, only EOS is allowed
    (``when_used_up="stop"``) or the decoder goes on with free coordinate bins (``"free"``). Rows without
    any proposal are not constrained (``constrained`` is False).

    Args:
        proposals: float ``[B, P, 3]`` normalized coordinates; weight: float ``[B, P]`` (> 0: real).
        n_disc: coordinate bins; residual: bins either side of a proposal's bin that stay allowed.
        when_used_up: ``stop`` or ``free`` (see above).
    """

    def __init__(self, proposals: torch.Tensor, weight: torch.Tensor, n_disc: int, residual: int = 1,
                 when_used_up: str = "stop"):
        if residual < 0:
            raise ValueError(f"residual must be >= 0 bins, got {residual}")
        if when_used_up not in ("stop", "free"):
            raise ValueError(f"when_used_up must be 'stop' or 'free', got {when_used_up!r}")
        self.when_used_up = when_used_up
        self.bins = torch.floor((proposals.float() + 0.5) * n_disc).long().clamp(0, n_disc - 1)  # [B, P, 3]
        self.unused = weight > 0  # [B, P]
        self.constrained = self.unused.any(dim=1)  # [B]
        self.candidates = self.unused.clone()
        self.emitted = torch.zeros(self.bins.shape[0], 3, dtype=torch.long, device=self.bins.device)
        self.free_joint = torch.zeros(self.bins.shape[0], dtype=torch.bool, device=self.bins.device)  # [B]
        self.residual = residual
        self.axis_bins = torch.arange(n_disc, device=self.bins.device)

    def allowed_bins(self, slot: int) -> torch.Tensor:
        """Bool ``[B, n_disc]``: the bins coordinate ``slot`` (0 x, 1 y, 2 z) may take (all of them on rows
        that decode the current joint freely; none at x on rows with every proposal used and ``stop``)."""
        candidates = self.unused if slot == 0 else self.candidates
        near = (self.bins[:, :, slot, None] - self.axis_bins).abs() <= self.residual  # [B, P, n_disc]
        allowed = (near & candidates[..., None]).any(dim=1)
        if self.when_used_up == "free":
            free_joint = ~self.unused.any(dim=1) if slot == 0 else self.free_joint
            allowed = allowed | free_joint[:, None]
        return allowed

    def emit(self, slot: int, picked: torch.Tensor, active: torch.Tensor) -> None:
        """Record the bin ``picked [B]`` of coordinate ``slot`` on rows where ``active [B]``."""
        if slot == 0:
            self.candidates = self.unused.clone()
            self.free_joint = torch.where(active, ~self.unused.any(dim=1), self.free_joint)
        match = (self.bins[:, :, slot] - picked[:, None]).abs() <= self.residual
        self.candidates = torch.where(active[:, None], self.candidates & match, self.candidates)
        self.emitted[:, slot] = torch.where(active, picked, self.emitted[:, slot])
        if slot == 2:
            dist = (self.bins - self.emitted[:, None]).abs().sum(-1).float()
            dist = dist.masked_fill(~self.candidates, float("inf"))
            nearest = dist.argmin(dim=1)
            use = active & self.candidates.any(dim=1)
            rows = torch.nonzero(use, as_tuple=True)[0]
            self.unused[rows, nearest[rows]] = False
