"""A seeded generator of hostile request lines for the JSON-lines server (tests and bench).

Every line is a complete ``bytes`` line without its newline; it holds no ``\\n`` or ``\\r`` (each line
must be exactly one request) and is never blank (blank lines get no reply by design).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

KINDS = ("malformed_json", "wrong_types", "non_finite", "huge_numbers", "deep_nesting", "unknown_method",
         "bad_paths", "output_is_input", "invalid_utf8", "non_object", "bad_cancel", "bad_options", "long_line")


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _junk(rng: random.Random, n: int) -> bytes:
    data = bytes(rng.choice([b for b in range(256) if b not in (10, 13)]) for _ in range(n))
    return data if data.strip() else b"x" + data


def _nest(rng: random.Random, depth: int) -> str:
    if rng.random() < 0.5:
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def hostile_line(rng: random.Random, kind: str, npz_input: Path, folder: Path) -> bytes:
    """One hostile line of ``kind`` (see :data:`KINDS`); paths refer to a valid input and a scratch folder."""
    rid = rng.randint(1, 10**6)
    valid_rig = {"id": rid, "method": "rig", "params": {"input": str(npz_input), "output": str(folder / "r.npz")}}
    if kind == "malformed_json":
        text = _dump(valid_rig)
        choice = rng.randrange(5)
        if choice == 0:
            return text[:rng.randrange(1, len(text))].encode()
        if choice == 1:
            return _junk(rng, rng.randint(1, 200))
        if choice == 2:
            return rng.choice([b"{", b"}", b"{\"id\":1,}", b"{'id': 1}", b"{\"id\":01}", b"[1,2", b"nul", b"\"abc",
                               b"{\"id\":1 \"method\":\"ping\"}", b"{\"a\":\"\\x\"}", b"\\u0000"])
        if choice == 3:
            return (text + text).encode()
        return text.replace(":", "", 1).encode()
    if kind == "wrong_types":
        bad = rng.choice([[1], {"x": 1}, 1.5, True, None, "", 0])
        where = rng.randrange(5)
        msg: dict = {"id": rid, "method": "rig", "params": dict(valid_rig["params"])}
        if where == 0:
            msg["id"] = bad if bad is not None else [None]
        elif where == 1:
            msg["method"] = bad if not isinstance(bad, str) else 7
        elif where == 2:
            msg["params"] = rng.choice([[1, 2], "params", 3, True])
        elif where == 3:
            msg["params"]["input"] = bad if not isinstance(bad, str) else 12
        else:
            msg["params"]["options"] = rng.choice([[1], "fast", 5, True])
        return _dump(msg).encode()
    if kind == "non_finite":
        token = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"])
        template = rng.choice(['{"id":1,"method":"cancel","params":{"id":%s}}', '{"id":%s,"method":"ping"}',
                               '{"id":1,"method":"rig","params":{"input":"x.npz","options":{"n_points":%s}}}',
                               '{"id":1,"method":"ping","params":{"x":[1,2,%s]}}', '%s'])
        return (template % token).encode()
    if kind == "huge_numbers":
        choice = rng.randrange(4)
        if choice == 0:
            return ('{"id":%s,"method":"ping"}' % ("9" * rng.randint(50, 6000))).encode()
        if choice == 1:
            name, value = rng.choice([("n_points", "1e300"), ("seed", str(2**70)), ("max_joints", str(10**30)),
                                      ("refine_iters", "-1e20"), ("batch_frames", "4.5e18"), ("seed", "-" + "1" * 30)])
            return ('{"id":1,"method":"rig","params":{"input":"%s","options":{"%s":%s}}}'
                    % (npz_input, name, value)).encode()
        if choice == 2:
            return ('{"id":1,"method":"cancel","params":{"id":%s}}' % ("1" + "0" * rng.randint(20, 400))).encode()
        return ('{"id":1,"method":"ping","params":{"x":%se%d}}' % ("1." + "7" * 30, rng.randint(200, 400))).encode()
    if kind == "deep_nesting":
        depth = rng.choice([50, 500, 1000, 5000, 100000])
        inner = _nest(rng, depth)
        if rng.random() < 0.5:
            return inner.encode()
        return ('{"id":1,"method":"rig","params":{"input":"x.npz","options":{"n_points":%s}}}' % inner).encode()
    if kind == "unknown_method":
        method = rng.choice(["", "RIG", "rig ", "__init__", "_rig", "send", "serve", "../rig", "ping\u0000",
                             "x" * rng.randint(1, 3000), "\u2603"])
        return _dump({"id": rid, "method": method, "params": {}}).encode()
    if kind == "bad_paths":
        path = rng.choice([str(folder / "missing.npz"), "", "\u0000", str(folder) + "/\u0000x.npz", str(folder),
                           "/dev/null", "/dev/zero", "/proc/self/mem", "x" * 5000, str(folder / "not_npz.txt"),
                           "~/nothing.npz", "\u2603.npz"])
        params = {"input": path} if rng.random() < 0.5 else {"input": str(npz_input), "output": path}
        return _dump({"id": rid, "method": "rig", "params": params}).encode()
    if kind == "output_is_input":
        target = rng.choice([npz_input, folder / "in_link.npz", folder / "in_hard.npz", folder / "." / npz_input.name])
        return _dump({"id": rid, "method": "rig", "params": {"input": str(npz_input), "output": str(target)}}).encode()
    if kind == "invalid_utf8":
        text = _dump({"id": rid, "method": "rig", "params": {"input": "PLACE"}}).encode()
        bad = rng.choice([b"\xff", b"\xfe\xfe", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"])
        return text.replace(b"PLACE", b"in" + bad + b".npz")
    if kind == "non_object":
        return rng.choice([b"1", b"-0.5", b"\"ping\"", b"[]", b"[{\"id\":1,\"method\":\"ping\"}]", b"null", b"true",
                           b"false", b"{}", b"[[]]"])
    if kind == "bad_cancel":
        target = rng.choice([[1], {"id": 1}, 1.5, True, "nope", -1])
        return _dump({"id": rid, "method": "cancel", "params": {"id": target}}).encode()
    if kind == "bad_options":
        name = rng.choice(["n_points", "seed", "refine", "models", "wings", "device", "max_joints", "up_axis",
                           "checkpoint_dir", ""])
        value = rng.choice([None, "many", -5, 0, 1.5, [], {}, True, "\u0000", 2**31, -(2**31) - 1])
        return _dump({"id": rid, "method": "rig",
                      "params": {"input": str(npz_input), "output": str(folder / "r.npz"),
                                 "options": {name: value}}}).encode()
    if kind == "long_line":
        return b'{"id":1,"method":"ping","params":{"pad":"' + b"a" * rng.randint(1 << 20, (1 << 20) + 5000) + b'"}}'
    raise ValueError(f"unknown kind {kind!r}")


def hostile_lines(n: int, seed: int, npz_input: Path, folder: Path) -> list[tuple[str, bytes]]:
    """``n`` lines ``(kind, line)``: every kind in turn (a long line every 200th), contents drawn with ``seed``."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if k != "long_line"]
    out = []
    for i in range(n):
        kind = "long_line" if i % 200 == 199 else kinds[i % len(kinds)]
        out.append((kind, hostile_line(rng, kind, npz_input, folder)))
    return out
