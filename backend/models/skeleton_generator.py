"""Skeleton generator G_theta (paper §3.1, Eq. 1): point cloud -> autoregressive joint tokens.

Two point encoders (``SkeletonGeneratorConfig.design``):

* ``perceiver`` -- a Perceiver-style encoder turns ``N`` oriented surface points into ``n_latents``
  feature tokens ``F_k``.
* ``local`` -- edge convolutions over k nearest neighbours give per-point features ``F_k`` (no latent
  bottleneck) and a dense head votes, per point, for the nearest joint; the votes are clustered into
  joint proposals whose density is added to the coordinate-bin logits (see
  :mod:`backend.models.local_encoder`).

In both, a causal (GPT-style) transformer decoder cross-attends to the point features and predicts
the token stream ``p(t_i | t_<i, F_k)`` over (tx, ty, tz, tp) quadruples. Generation uses a key/value
cache and constrained decoding, so every output is a valid single-rooted tree in canonical
depth-first order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from backend.models.layers import MLP, Attention, FourierEmbedding, PerceiverEncoder, init_weights
from backend.models.local_encoder import (JointCountHead, LocalPointEncoder, PointContext, ProposalConfig,
                                          ProposalPointer, coordinate_prior, count_features, joint_proposals,
                                          prior_log_sigma_init)
from backend.models.tokenizer import SkeletonTokenizer, merge_duplicate_joints

log = logging.getLogger(__name__)


DESIGNS = ("perceiver", "local")
COORDINATE_DECODINGS = ("free", "proposals", "proposals-then-free", "all-proposals")
EOS_PRIOR_EPS = 0.05
"""``local`` design: the EOS logit gains ``eos_scale * -log(uncovered + EOS_PRIOR_EPS)``."""


class DecodingCancelled(RuntimeError):
    """Raised by :meth:`SkeletonGenerator.generate` when its ``should_cancel`` callback returns True."""


@dataclass
class SkeletonGeneratorConfig:
    """Architecture of G_theta.

    Attributes:
        n_disc: coordinate bins (paper: 128).
        max_joints: longest skeleton (64); fixes the positional table (4 * max_joints + 2 tokens).
        d_model: width of every token.
        n_heads: attention heads.
        n_latents: latent tokens the point encoder produces.
        n_enc_layers: self-attention blocks over the latents.
        n_dec_layers: decoder blocks (causal self-attention + cross-attention + MLP).
        n_freq: Fourier octaves for point and coordinate embeddings.
        mlp_ratio: MLP hidden width / d_model.
        dropout: dropout in MLPs (0 for small data).
        design: point encoder, ``perceiver`` (latent bottleneck) or ``local`` (per-point features,
            dense joint votes, proposal prior on the coordinate tokens).
        knn: ``local``: neighbours per point in the edge convolutions.
        d_edge: ``local``: channels of the edge convolutions' neighbour max-pool.
        n_edge_layers: ``local``: edge-convolution layers.
        n_point_attn_layers: ``local``: full self-attention blocks over the points after them.
        n_memory_points: ``local``: the decoder cross-attends to the features of the first this many
            points (the samples are in random order, so a random subset; every point's features
            already pool its neighbours); 0: all points. All points vote for joints.
        votes_per_point: ``local``: joints each point votes for (its ``K`` nearest; the dense head
            predicts ``K`` offsets and distances per point, every vote is clustered).
        prior_sigma: ``local``: initial width of the proposal kernels of the coordinate prior.
        cover_sigma: ``local``: width of the kernel that marks a proposal as used by an earlier joint.
        proposal_bandwidth, proposal_radius, proposal_weight_scale, proposal_min_mass,
            proposal_radius_scale: ``local``: the clustering of the votes
            (:class:`~backend.models.local_encoder.ProposalConfig`).
        count_head: ``local``: a :class:`~backend.models.local_encoder.JointCountHead` predicts each frame's
            joint count, and the proposals are the densest that many of a finer clustering (minimum vote
            mass ``count_min_mass``); fitted after pretraining (``training/count_head.py``).
        count_min_mass: the finer clustering's minimum vote mass.
        decode_coordinates: ``local``: how :meth:`SkeletonGenerator.generate` picks coordinate tokens by
            default: ``free`` (any bin the logits favour), ``proposals`` (each joint points at an unused
            joint proposal, :class:`~backend.models.local_encoder.ProposalPointer`; stop when none is left)
            ``proposals-then-free`` (the same, then free bins once every proposal is used) or
            ``all-proposals`` (pointing, with no stop before every proposal is used: the votes decide the
            joint count, the decoder the order, the residual bins and the parents).
        proposal_residual_bins: ``proposals`` decoding: bins either side of a proposal that stay allowed.
    """

    n_disc: int = 128
    max_joints: int = 64
    d_model: int = 192
    n_heads: int = 6
    n_latents: int = 64
    n_enc_layers: int = 2
    n_dec_layers: int = 4
    n_freq: int = 8
    mlp_ratio: int = 4
    dropout: float = 0.0
    design: str = "perceiver"
    knn: int = 16
    d_edge: int = 64
    n_edge_layers: int = 3
    n_point_attn_layers: int = 0
    n_memory_points: int = 128
    votes_per_point: int = 1
    prior_sigma: float = 0.01
    cover_sigma: float = 0.015
    proposal_bandwidth: float = 0.01
    proposal_radius: float = 0.02
    proposal_weight_scale: float = 0.1
    proposal_min_mass: float = 1.0
    proposal_radius_scale: float = 0.0
    count_head: bool = False
    count_min_mass: float = 1.0
    decode_coordinates: str = "free"
    proposal_residual_bins: int = 1

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise ValueError(f"unknown skeleton generator design {self.design!r}; choose from {DESIGNS}")
        if self.decode_coordinates not in COORDINATE_DECODINGS:
            raise ValueError(f"unknown coordinate decoding {self.decode_coordinates!r}; "
                             f"choose from {COORDINATE_DECODINGS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def proposals(self) -> ProposalConfig:
        return ProposalConfig(bandwidth=self.proposal_bandwidth, radius=self.proposal_radius,
                              radius_scale=self.proposal_radius_scale, weight_scale=self.proposal_weight_scale,
                              min_mass=self.proposal_min_mass, max_proposals=self.max_joints)

    @property
    def tokenizer(self) -> SkeletonTokenizer:
        return SkeletonTokenizer(n_disc=self.n_disc, max_joints=self.max_joints)


class DecoderBlock(nn.Module):
    """Causal self-attention (with an optional KV cache), cross-attention to the point latents, MLP."""

    def __init__(self, cfg: SkeletonGeneratorConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.self_attn = nn.LayerNorm(d), Attention(d, cfg.n_heads)
        self.norm2, self.cross_attn = nn.LayerNorm(d), Attention(d, cfg.n_heads, cross=True)
        self.norm3, self.mlp = nn.LayerNorm(d), MLP(d, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor],
                cache: dict | None = None) -> torch.Tensor:
        """``x [B, L, d]``; with ``cache`` the L new tokens are appended after ``cache['len']`` old ones."""
        h = self.norm1(x)
        if cache is None:
            x = x + self.self_attn(h, is_causal=True)
        else:
            q, k_new, v_new = self.self_attn.project_qkv(h)
            start, L = cache["len"], x.shape[1]
            cache["k"][:, :, start:start + L] = k_new
            cache["v"][:, :, start:start + L] = v_new
            k, v = cache["k"][:, :, :start + L], cache["v"][:, :, :start + L]
            mask = None
            if L > 1:  # several new tokens: causal among themselves, full view of the past
                q_pos = torch.arange(start, start + L, device=x.device)[:, None]
                mask = torch.arange(start + L, device=x.device)[None, :] <= q_pos
            x = x + self.self_attn.attend(q, k, v, mask=mask)
        q = self.cross_attn.split(self.cross_attn.q(self.norm2(x)))
        x = x + self.cross_attn.attend(q, *cross_kv)
        return x + self.mlp(self.norm3(x))


class SkeletonGenerator(nn.Module):
    """G_theta: ``forward(points, normals, tokens) -> logits`` and constrained ``generate``."""

    def __init__(self, cfg: SkeletonGeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SkeletonGeneratorConfig()
        self.tokenizer = cfg.tokenizer
        d = cfg.d_model
        if cfg.design == "local":
            self.encoder = LocalPointEncoder(d, cfg.n_heads, cfg.n_edge_layers, cfg.n_point_attn_layers, cfg.knn,
                                             cfg.n_freq, cfg.mlp_ratio, cfg.dropout, cfg.d_edge,
                                             cfg.votes_per_point)
            if cfg.count_head:
                self.count_head = JointCountHead(d)
        else:
            self.encoder = PerceiverEncoder(d, cfg.n_heads, cfg.n_latents, cfg.n_enc_layers, cfg.n_freq,
                                            cfg.mlp_ratio, cfg.dropout)
        self.tok_emb = nn.Embedding(self.tokenizer.vocab_size, d)
        self.pos_emb = nn.Embedding(self.tokenizer.max_len, d)
        self.slot_emb = nn.Embedding(5, d)
        self.coord_fourier = FourierEmbedding(cfg.n_freq)
        self.coord_proj = nn.Linear(self.coord_fourier.out_dim, d)
        self.blocks = nn.ModuleList([DecoderBlock(cfg) for _ in range(cfg.n_dec_layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.tokenizer.vocab_size, bias=False)
        init_weights(self)
        if cfg.design == "local":  # after init_weights: these are not Linear/Embedding weights
            self.prior_log_sigma = nn.Parameter(prior_log_sigma_init(cfg.prior_sigma))
            self.prior_scale = nn.Parameter(torch.ones(3))
            self.eos_scale = nn.Parameter(torch.ones(()))
        slots = torch.as_tensor(self.tokenizer.slot_types(self.tokenizer.max_len))
        self.register_buffer("slot_of_pos", slots, persistent=False)

    # ---- pieces -------------------------------------------------------------------------------
    def encode_points(self, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor | PointContext:
        """Point features ``F_k`` of ``points, normals [B, N, 3]``.

        ``perceiver``: latents float ``[B, n_latents, d]``. ``local``: a :class:`PointContext`
        (per-point features ``[B, N, d]``, dense votes and the joint proposals clustered from them).
        """
        if points.shape != normals.shape or points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"points and normals must both be [B, N, 3], got {list(points.shape)} "
                             f"and {list(normals.shape)}")
        if self.cfg.design != "local":
            return self.encoder(torch.cat([points, normals], dim=-1))
        features, offsets, distances = self.encoder(torch.cat([points, normals], dim=-1))
        if self.cfg.count_head:
            proposals, weight = self.counted_proposals(points, features, offsets, distances)
        else:
            proposals, weight = joint_proposals(points, offsets.detach(), distances.detach(), self.cfg.proposals)
        n_memory = self.cfg.n_memory_points or features.shape[1]
        return PointContext(features, offsets, distances, proposals, weight, features[:, :n_memory])

    def count_inputs(self, points: torch.Tensor, features: torch.Tensor, offsets: torch.Tensor,
                     distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The finer clustering (minimum mass ``cfg.count_min_mass``) of the votes, ``(proposals [B, P, 3],
        weight [B, P], count_features [B, 2 d + 3])``: what :class:`JointCountHead` is fitted on."""
        fine = replace(self.cfg.proposals, min_mass=self.cfg.count_min_mass)
        proposals, weight = joint_proposals(points, offsets.detach(), distances.detach(), fine)
        feats = count_features(features.detach(), distances.detach(), weight.sum(1), self.cfg.max_joints)
        return proposals, weight, feats

    def counted_proposals(self, points: torch.Tensor, features: torch.Tensor, offsets: torch.Tensor,
                          distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``count_head``: the densest ``round(predicted count)`` proposals of the finer clustering."""
        proposals, weight, feats = self.count_inputs(points, features, offsets, distances)
        keep = self.kept_count(feats, weight.sum(1))
        return proposals, weight * (torch.arange(weight.shape[1], device=weight.device)[None] < keep[:, None]).float()

    @torch.no_grad()
    def kept_count(self, count_feats: torch.Tensor, n_candidates: torch.Tensor) -> torch.Tensor:
        """``count_head``: how many proposals a frame keeps, int64 ``[B]``: the predicted joint count of
        ``count_feats [B, 2 d + 3]``, rounded, within ``[1, max_joints]`` and at most the ``n_candidates [B]``
        proposals of the finer clustering."""
        n = self.count_head(count_feats).round().clamp(1, self.cfg.max_joints).long()
        return torch.minimum(n, n_candidates.long())

    @staticmethod
    def memory(context: torch.Tensor | PointContext) -> torch.Tensor:
        """The cross-attention memory ``[B, M, d]`` of an :meth:`encode_points` result."""
        return context.memory if isinstance(context, PointContext) else context

    def add_prior(self, logits: torch.Tensor, tokens: torch.Tensor, context: torch.Tensor | PointContext,
                  start: int = 0) -> torch.Tensor:
        """``local`` design: add the proposal prior to ``logits [B, L', vocab]`` of positions ``start ..``.

        ``tokens [B, start + L']`` is the whole stream so far (the prior of a coordinate depends on the
        joint's earlier coordinates and on the earlier joints). Bin logits of coordinate slot ``s`` gain
        ``prior_scale[s] * log(n_disc * prior)`` (0 for a uniform prior); the EOS logit at joint starts gains
        ``eos_scale * -log(uncovered + EOS_PRIOR_EPS)``. Other designs: ``logits`` unchanged.
        """
        if not isinstance(context, PointContext):
            return logits
        n = self.cfg.n_disc
        log_prior, uncovered = coordinate_prior(tokens, context.proposals, context.proposal_weight, n,
                                                self.prior_log_sigma, self.cfg.cover_sigma, first_position=start)
        slot = torch.arange(start, tokens.shape[1], device=logits.device) % 4  # slot the position predicts
        scale = torch.cat([self.prior_scale, self.prior_scale.new_zeros(1)])[slot]  # parent positions: 0
        eos_bonus = self.eos_scale * -(uncovered + EOS_PRIOR_EPS).log() * (slot == 0)
        tk = self.tokenizer
        add = torch.cat([scale[None, :, None] * log_prior, log_prior.new_zeros(*log_prior.shape[:2], tk.eos - n),
                         eos_bonus[..., None], log_prior.new_zeros(*log_prior.shape[:2], tk.vocab_size - tk.eos - 1)],
                        dim=-1)
        return logits + add.to(logits.dtype)

    def embedding_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token table ``[vocab, d]`` and position table ``[max_len, d]``.

        A coordinate bin's embedding is its learned vector plus a projection of Fourier features of
        the bin centre (neighbouring bins start out similar); a position's is its learned vector plus
        its slot (BOS / x / y / z / parent) vector.
        """
        n = self.cfg.n_disc
        w = self.tok_emb.weight
        centres = (torch.arange(n, device=w.device, dtype=w.dtype) + 0.5) / n - 0.5
        coord = self.coord_proj(self.coord_fourier(centres[:, None].expand(n, 3)))
        table = torch.cat([self.tok_emb.weight[:n] + coord, self.tok_emb.weight[n:]], dim=0)
        return table, self.pos_emb.weight + self.slot_emb(self.slot_of_pos)

    def embed_tokens(self, tokens: torch.Tensor, start: int = 0,
                     tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Embeddings ``[B, L, d]`` of ``tokens [B, L]`` placed at positions ``start .. start+L-1``."""
        L = tokens.shape[1]
        if start + L > self.tokenizer.max_len:
            raise ValueError(f"token sequence of length {start + L} exceeds the model's maximum "
                             f"{self.tokenizer.max_len} (max_joints = {self.cfg.max_joints})")
        tok_table, pos_table = tables if tables is not None else self.embedding_tables()
        return F.embedding(tokens, tok_table) + pos_table[start:start + L][None]

    def cross_kv(self, latents: torch.Tensor | PointContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys/values of the point features (computed once per frame)."""
        memory = self.memory(latents)
        return [blk.cross_attn.project_kv(memory) for blk in self.blocks]

    # ---- teacher forcing ----------------------------------------------------------------------
    def forward(self, points: torch.Tensor, normals: torch.Tensor, tokens: torch.Tensor,
                return_context: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | PointContext]:
        """Teacher-forced logits of Eq. 1.

        Args:
            points: float ``[B, N, 3]`` anchor-normalized surface points of a frame.
            normals: float ``[B, N, 3]`` unit normals.
            tokens: int64 ``[B, L]`` token ids starting with BOS (PAD after EOS).
            return_context: also return the :meth:`encode_points` result (the ``local`` design's dense
                votes are trained with their own loss).
        Returns:
            logits float ``[B, L, vocab]``; position ``i`` scores token ``i + 1``.
        """
        context = self.encode_points(points, normals)
        logits = self.decode_logits(context, tokens)
        return (logits, context) if return_context else logits

    def decode_logits(self, latents: torch.Tensor | PointContext, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, vocab]`` for ``tokens [B, L]`` given precomputed point features."""
        x = self.embed_tokens(tokens)
        for blk, kv in zip(self.blocks, self.cross_kv(latents)):
            x = blk(x, kv)
        return self.add_prior(self.head(self.norm(x)), tokens, latents)

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> list[dict]:
        """Per-block key/value cache; the first block's dict also keeps the token history ``tokens [B, max_len]``."""
        shape = (batch, self.cfg.n_heads, self.tokenizer.max_len, self.cfg.d_model // self.cfg.n_heads)
        cache = [{"k": torch.zeros(shape, device=device, dtype=dtype),
                  "v": torch.zeros(shape, device=device, dtype=dtype), "len": 0} for _ in self.blocks]
        cache[0]["tokens"] = torch.full((batch, self.tokenizer.max_len), self.tokenizer.pad, dtype=torch.long,
                                        device=device)
        return cache

    def step(self, tokens: torch.Tensor, cross_kv: list, cache: list[dict],
             tables: tuple[torch.Tensor, torch.Tensor] | None = None,
             context: torch.Tensor | PointContext | None = None) -> torch.Tensor:
        """Feed new ``tokens [B, L]`` through the cache; returns logits ``[B, L, vocab]``.

        ``tables`` (from :meth:`embedding_tables`) can be passed to skip rebuilding them every step.
        ``context`` (the :meth:`encode_points` result) is required by the ``local`` design (its prior).
        """
        start = cache[0]["len"]
        x = self.embed_tokens(tokens, start, tables)
        for blk, kv, c in zip(self.blocks, cross_kv, cache):
            x = blk(x, kv, c)
        for c in cache:
            c["len"] = start + tokens.shape[1]
        history = cache[0]["tokens"]
        history[:, start:start + tokens.shape[1]] = tokens
        logits = self.head(self.norm(x))
        if self.cfg.design == "local":
            if not isinstance(context, PointContext):
                raise ValueError("the local design needs the encode_points() context in step()")
            logits = self.add_prior(logits, history[:, :start + tokens.shape[1]], context, start)
        return logits

    # ---- constrained generation ---------------------------------------------------------------
    def _stop_or_continue(self, logits: torch.Tensor, picked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Between joints: EOS if its logit beats the log-sum-exp of all coordinate bins, else the best bin.

        ``logits [B, vocab]`` (masked ones use -inf), ``picked [B]`` the current choice, kept where ``keep``.
        A row with no allowed bin (joint limit) stops; a row where EOS is not allowed continues.
        """
        tk = self.tokenizer
        bins = logits[:, : tk.n_disc]
        stop = logits[:, tk.eos] > torch.logsumexp(bins, dim=-1)
        choice = torch.where(stop, torch.full_like(picked, tk.eos), bins.argmax(dim=-1))
        return torch.where(keep, picked, choice)

    @torch.inference_mode()
    def generate(self, points: torch.Tensor, normals: torch.Tensor, max_joints: int = 64,
                 min_joints: int = 1, temperature: float = 0.0, use_cache: bool = True, dfs_constraint: bool = True,
                 generator: torch.Generator | None = None, stop_rule: str = "mass", stop_after_repeats: int = 0,
                 return_stats: bool = False, should_cancel: Callable[[], bool] | None = None,
                 coordinates: str | None = None) -> list[tuple[np.ndarray, np.ndarray]] | tuple[list, dict]:
        """Decode one skeleton per frame with constrained (greedy by default) decoding.

        Constraints: coordinate slots emit only bins; the first parent slot emits only the root
        label; later parent slots emit only an earlier joint (with ``dfs_constraint`` only the
        previous joint or one of its ancestors, i.e. canonical depth-first order); EOS only between
        joints, after at least one joint; at ``max_joints`` EOS is forced. Every output is therefore
        a valid tree. Joints closer than half a bin to an earlier joint are merged afterwards.

        Stopping (greedy only). Between joints the choice is really "stop" or "another joint", and
        the next joint's probability is spread over 128 x-bins. ``stop_rule="mass"`` (default) stops
        when P(EOS) exceeds the total probability of all allowed bins, and otherwise takes the best
        bin; ``"argmax"`` is plain token-level greedy, which stops as soon as EOS beats the single
        most likely bin and so ends skeletons early when the coordinate distribution is flat.

        Repetition stop. A decoder that has fallen into a loop emits joints in bins already taken;
        they are merged away, so the rest of the stream only costs time. With
        ``stop_after_repeats = n > 0`` EOS is forced once the last ``n`` joints all repeat an earlier
        joint's bins. The output equals the full decode cut before that run of repeats and merged.

        Args:
            points, normals: float ``[B, N, 3]``.
            max_joints: joint limit (at most the model's ``max_joints``).
            min_joints: EOS is allowed only after this many joints (clipped to ``max_joints``).
            temperature: 0 for greedy, else sampling temperature.
            use_cache: use the KV cache (False recomputes the whole prefix every step).
            stop_rule: ``mass`` or ``argmax`` (see above).
            stop_after_repeats: ``n`` of the repetition stop (0: off, decode until EOS or the limit).
            coordinates: ``free``, ``proposals`` (``local`` design only: every joint points at an
                unused joint proposal, within ``cfg.proposal_residual_bins`` bins per axis, and decoding
                stops when none is left; see :class:`~backend.models.local_encoder.ProposalPointer`) or
                ``proposals-then-free`` (free coordinate bins once every proposal is used) or
                ``all-proposals`` (EOS only once every proposal is used, so every proposal becomes a joint).
                Default: ``cfg.decode_coordinates``.
            should_cancel: polled before every decoding step (a few ms each); when it returns True,
                :class:`DecodingCancelled` is raised (the callback may also raise its own exception).
            return_stats: also return a dict of per-sample counts (greedy decoding only):
                ``constraint_overrides`` (steps where the unconstrained argmax was not allowed),
                ``validity_overrides`` (steps where it would have broken the tree or the token
                grammar, i.e. the output needed the constraints to be valid), ``merged`` joints,
                ``hit_limit`` (decoding stopped at ``max_joints`` without EOS) and
                ``stopped_on_repeats`` (the repetition stop ended it).
        Returns:
            list of ``(joints float32 [J, 3] normalized, parents int32 [J])`` (and the stats dict).
        """
        self_training = self.training
        self.eval()
        tk = self.tokenizer
        max_joints = int(min(max_joints, tk.max_joints))
        if max_joints < 1:
            raise ValueError("max_joints must be at least 1")
        if stop_rule not in ("mass", "argmax"):
            raise ValueError(f"stop_rule must be 'mass' or 'argmax', got {stop_rule!r}")
        if stop_after_repeats < 0:
            raise ValueError(f"stop_after_repeats must be >= 0, got {stop_after_repeats}")
        min_joints = int(min(max(1, min_joints), max_joints))
        B, device = points.shape[0], points.device
        coordinates = coordinates or self.cfg.decode_coordinates
        if coordinates not in COORDINATE_DECODINGS:
            raise ValueError(f"coordinates must be one of {COORDINATE_DECODINGS}, got {coordinates!r}")
        latents = self.encode_points(points, normals)
        pointer = None
        if coordinates != "free":
            if not isinstance(latents, PointContext):
                raise ValueError(f"coordinates={coordinates!r} needs the local design, this model is "
                                 f"{self.cfg.design!r}")
            pointer = ProposalPointer(latents.proposals, latents.proposal_weight, tk.n_disc,
                                      self.cfg.proposal_residual_bins,
                                      when_used_up="free" if coordinates == "proposals-then-free" else "stop")
        kv = self.cross_kv(latents) if use_cache else None
        tables = self.embedding_tables() if use_cache else None
        cache = self.new_cache(B, device, self.memory(latents).dtype) if use_cache else None
        seq = torch.full((B, 1), tk.bos, dtype=torch.long, device=device)

        # decoding state, one row per sample
        vocab = torch.arange(tk.vocab_size, device=device)[None]  # [1, vocab]
        is_bin = vocab < tk.n_disc
        is_eos = vocab == tk.eos
        pad = (vocab == tk.pad).expand(B, -1)
        parent_of_token = vocab - tk.parent_offset - 1  # parent index a token names (-1: root label)
        is_parent = (vocab >= tk.parent_offset) & (vocab <= tk.parent_offset + max_joints)
        rows = torch.arange(B, device=device)
        n_joints = torch.zeros(B, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        M = max_joints + 1
        ancestry = torch.zeros(B, M, M, dtype=torch.bool, device=device)  # [b, j, i]: i on the root -> j path
        bins = torch.full((B, M, 3), -1, dtype=torch.long, device=device)  # coordinate bins per joint
        repeats = torch.zeros(B, dtype=torch.long, device=device)  # trailing joints that repeat earlier bins
        stopped_on_repeats = torch.zeros(B, dtype=torch.bool, device=device)
        overrides = torch.zeros(B, dtype=torch.long, device=device)
        invalid = torch.zeros(B, dtype=torch.long, device=device)
        step_tokens = seq
        for t in range(4 * max_joints + 1):
            if should_cancel is not None and should_cancel():
                self.train(self_training)
                raise DecodingCancelled(f"skeleton decoding cancelled at step {t}")
            if use_cache:
                logits = self.step(step_tokens, kv, cache, tables, context=latents)[:, -1].float()
            else:
                logits = self.decode_logits(latents, seq)[:, -1].float()
            # valid: what keeps the output a tree; allowed: valid and (optionally) canonical DFS order
            slot = t % 4  # 0..2 coordinates, 3 parent; t = 4 j + slot
            n = n_joints[:, None]
            if slot == 0:
                valid = (is_bin & (n < max_joints)) | (is_eos & (n >= 1))
                allowed = valid & ~(is_eos & (n < min_joints))
                if stop_after_repeats:
                    stopping = (repeats >= stop_after_repeats) & (n_joints >= min_joints)
                    allowed = torch.where(stopping[:, None], is_eos.expand(B, -1), allowed)
            elif slot < 3:
                valid = allowed = is_bin.expand(B, -1)
            else:
                valid = torch.where(n == 0, parent_of_token == -1,
                                    is_parent & (parent_of_token >= 0) & (parent_of_token < n))
                allowed = valid
                if dfs_constraint:  # the previous joint or one of its ancestors: the root -> last joint path
                    on_chain = ancestry[rows, (n_joints - 1).clamp(min=0)]
                    chain = on_chain.gather(1, parent_of_token.clamp(0, max_joints).expand(B, -1))
                    allowed = torch.where(n == 0, valid, valid & chain)
            if pointer is not None and slot < 3:
                near = F.pad(pointer.allowed_bins(slot), (0, tk.vocab_size - tk.n_disc))  # [B, vocab]
                pointed = (allowed & ~is_bin) | (allowed & near)
                if slot == 0:  # every proposal used and no free joints after them: stop
                    pointed = torch.where(near.any(1, keepdim=True), pointed, is_eos & (n >= 1))
                    if coordinates == "all-proposals":  # no stop while a proposal is unused
                        pointed = torch.where(pointer.unused.any(1, keepdim=True), pointed & ~is_eos, pointed)
                allowed = torch.where(pointer.constrained[:, None], pointed, allowed)
            allowed = torch.where(finished[:, None], pad, allowed)
            masked = logits.masked_fill(~allowed, float("-inf"))
            if temperature > 0:
                probs = torch.softmax(masked / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = masked.argmax(dim=-1)
            if temperature == 0 and slot == 0 and stop_rule == "mass":
                keep = finished if not stop_after_repeats else finished | stopping
                nxt = self._stop_or_continue(masked, nxt, keep)
            active = ~finished
            if pointer is not None and slot < 3:
                pointer.emit(slot, nxt, active & (nxt < tk.n_disc))
            if temperature == 0 and return_stats:  # what an unconstrained decoder would have picked
                free = logits.argmax(dim=-1)
                if slot == 0 and stop_rule == "mass":
                    grammatical = (free < tk.n_disc) | (free == tk.eos)  # an unconstrained pick of the same kind
                    free = torch.where(grammatical, self._stop_or_continue(logits, free, ~grammatical), free)
                overrides += (active & (free != nxt)).long()
                invalid += (active & ~valid.gather(1, free[:, None])[:, 0]).long()  # finished rows: not counted
            if slot == 0:
                if stop_after_repeats:
                    stopped_on_repeats |= active & stopping & (nxt == tk.eos)
                finished = finished | (active & (nxt == tk.eos))
                bins[rows, n_joints, 0] = torch.where(active, nxt, bins[rows, n_joints, 0])
            elif slot < 3:
                bins[rows, n_joints, slot] = torch.where(active, nxt, bins[rows, n_joints, slot])
            else:
                parent = (nxt - tk.parent_offset - 1).clamp(-1, max_joints)
                j = n_joints
                path = ancestry[rows, parent.clamp(min=0)] & (parent >= 0)[:, None]
                path[rows, j] = True
                ancestry[rows, j] = torch.where(active[:, None], path, ancestry[rows, j])
                earlier = torch.arange(M, device=device)[None] < j[:, None]
                repeated = ((bins == bins[rows, j][:, None]).all(-1) & earlier).any(-1)
                repeats = torch.where(active, torch.where(repeated, repeats + 1, 0), repeats)
                n_joints = n_joints + active.long()
            step_tokens = nxt[:, None]
            seq = torch.cat([seq, step_tokens], dim=1)
            if bool(finished.all()):
                break
        self.train(self_training)
        finished_list = finished.tolist()
        out, merged, hit = [], [], []
        for b in range(B):
            toks = seq[b].tolist()
            hit.append(not finished_list[b])
            if not finished_list[b]:
                toks.append(tk.eos)
            joints, parents = tk.decode(toks)
            J0 = len(parents)
            joints, parents = merge_duplicate_joints(joints, parents, tol=0.5 * tk.bin_size)
            merged.append(J0 - len(parents))
            out.append((joints.astype(np.float32), parents.astype(np.int32)))
        if return_stats:
            return out, {"constraint_overrides": overrides.tolist(), "validity_overrides": invalid.tolist(),
                         "merged": merged, "hit_limit": hit, "stopped_on_repeats": stopped_on_repeats.tolist()}
        return out


def skeleton_token_loss(logits: torch.Tensor, tokens: torch.Tensor, pad_id: int,
                        parent_weight: float = 1.0) -> torch.Tensor:
    """Teacher-forced autoregressive cross-entropy of Eq. 1 (mean over non-PAD targets).

    Args:
        logits: ``[B, L, vocab]`` from :meth:`SkeletonGenerator.forward`.
        tokens: int64 ``[B, L]`` the same token ids (targets are ``tokens[:, 1:]``).
        pad_id: PAD id (ignored targets).
        parent_weight: weight of parent-slot targets (the SPRig alpha; 1 for plain pretraining).
    Returns:
        scalar loss.
    """
    target = tokens[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                         reduction="none").view_as(target)
    weight = (target != pad_id).float()
    if parent_weight != 1.0:
        pos = torch.arange(1, tokens.shape[1], device=tokens.device)
        is_parent = ((pos - 1) % 4 == 3)[None].expand_as(target)
        weight = weight * torch.where(is_parent, parent_weight, 1.0)
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)
