"""The avatar file: one safetensors file with JSON metadata; damaged, foreign or altered files are refused with a
clear error; nothing is unpickled."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nerf_talk.avatar import META_KEY, AvatarError, avatar_checksum, load_avatar, save_avatar
from preprocess.mesh_topology import LOWER_FACE
from test_fit_render import fitted


@pytest.fixture(scope="module")
def avatar_file(tmp_path_factory):
    return fitted(tmp_path_factory)["avatar"]


def _header_end(path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_load_reads_what_fit_wrote(avatar_file):
    parts = load_avatar(avatar_file)
    m = parts.meta
    assert m["kind"] == "nerf_talk.avatar" and m["format_version"] == 9
    assert m["checksum"] == avatar_checksum(parts.tensors, m)
    assert parts.tensors["background"].dtype == torch.uint8
    assert m["fps"] == 25.0 and m["size"] == [48, 48]
    for key in ("intrinsics", "head_aabb", "config", "adapter", "motion_model", "blink_rate_per_min", "recipe"):
        assert key in m, key
    # The synthetic clip is 40 frames: too short to fine-tune the motion network, and the file says so.
    assert m["motion_finetune"]["used"] is False and "too short" in m["motion_finetune"]["reason"]
    assert any(k.startswith("motion_model.") for k in parts.tensors)
    # Plain safetensors: any reader sees our metadata as JSON, without our code.
    from safetensors import safe_open

    with safe_open(str(avatar_file), framework="pt") as f:
        assert json.loads(f.metadata()[META_KEY])["kind"] == "nerf_talk.avatar"


def test_a_flipped_byte_is_refused(avatar_file, tmp_path):
    bad = tmp_path / "flipped.avatar"
    data = bytearray(avatar_file.read_bytes())
    pos = _header_end(avatar_file) + (len(data) - _header_end(avatar_file)) // 2
    data[pos] ^= 0x10
    bad.write_bytes(bytes(data))
    with pytest.raises(AvatarError, match="checksum mismatch"):
        load_avatar(bad)


def test_a_truncated_file_is_refused(avatar_file, tmp_path):
    bad = tmp_path / "truncated.avatar"
    bad.write_bytes(avatar_file.read_bytes()[: avatar_file.stat().st_size // 2])
    with pytest.raises(AvatarError, match="damaged or truncated"):
        load_avatar(bad)
    (tmp_path / "garbage.avatar").write_bytes(b"not an avatar at all")
    with pytest.raises(AvatarError, match="not a readable avatar"):
        load_avatar(tmp_path / "garbage.avatar")


def test_foreign_and_future_files_are_refused(avatar_file, tmp_path):
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(AvatarError, match="not a nerf_talk avatar"):
        load_avatar(tmp_path / "other.safetensors")
    parts = load_avatar(avatar_file)
    with pytest.raises(AvatarError, match="(?s)version 10.*update nerf_talk"):
        save_file(parts.tensors, str(tmp_path / "v10.avatar"),
                  metadata={META_KEY: json.dumps(dict(parts.meta, format_version=10))})
        load_avatar(tmp_path / "v10.avatar")
    # Version 8 files have the same tensors, but their mouth residual painted the interior the gap now looks into.
    save_file(parts.tensors, str(tmp_path / "v8.avatar"), metadata={META_KEY: json.dumps(dict(parts.meta, format_version=8))})
    with pytest.raises(AvatarError, match="(?s)version 8.*fit it again"):
        load_avatar(tmp_path / "v8.avatar")
    # Version 7 files (a warp of the tracked lower face alone: 71 lower control points, not 136) are fitted again.
    n = len(LOWER_FACE)
    v7 = {k: (v[..., :n, :].contiguous() if k.startswith("model.head.warp.lower_") and v.dim() >= 2 else
              v[:n] if k.startswith("model.head.warp.lower_") else v) for k, v in parts.tensors.items()}
    save_file(v7, str(tmp_path / "v7.avatar"), metadata={META_KEY: json.dumps(dict(parts.meta, format_version=7))})
    with pytest.raises(AvatarError, match="(?s)version 7.*fit it again.*landmark warp"):
        load_avatar(tmp_path / "v7.avatar")
    # Version 6 files (a warp that blended the two lips) and 3 to 5 (no landmark warp: their hash grid holds one face
    # per motion) are fitted again.
    v6 = {k: v for k, v in parts.tensors.items() if k not in ("model.head.warp.lower_side",
                                                                "model.head.warp.lower_guide")}
    save_file(v6, str(tmp_path / "v6.avatar"), metadata={META_KEY: json.dumps(dict(parts.meta, format_version=6))})
    with pytest.raises(AvatarError, match="(?s)version 6.*fit it again.*landmark warp"):
        load_avatar(tmp_path / "v6.avatar")
    old = {k: v for k, v in parts.tensors.items() if not k.startswith("model.head.warp.")}
    for v in (3, 4, 5):
        save_file(old, str(tmp_path / f"v{v}.avatar"), metadata={META_KEY: json.dumps(dict(parts.meta, format_version=v))})
        with pytest.raises(AvatarError, match=f"(?s)version {v}.*fit it again.*landmark warp"):
            load_avatar(tmp_path / f"v{v}.avatar")
    # A version 1 file (no motion-dependent mouth) is refused with the advice to fit again, not to re-export.
    old = {k: v for k, v in parts.tensors.items() if not k.startswith("model.head.mouth_mlp.")}
    save_file(old, str(tmp_path / "v1.avatar"), metadata={META_KEY: json.dumps(dict(parts.meta, format_version=1))})
    with pytest.raises(AvatarError, match="(?s)version 1.*fit it again"):
        load_avatar(tmp_path / "v1.avatar")
    # Nor is a version 2 file (no eye box: its eye code acted on the whole face).
    old = {k: v for k, v in parts.tensors.items() if k != "model.head.eye_box"}
    save_file(old, str(tmp_path / "v2.avatar"), metadata={META_KEY: json.dumps(dict(parts.meta, format_version=2))})
    with pytest.raises(AvatarError, match="(?s)version 2.*fit it again"):
        load_avatar(tmp_path / "v2.avatar")
    with pytest.raises(AvatarError, match="not found"):
        load_avatar(tmp_path / "missing.avatar")


def test_swapped_or_reshaped_tensors_are_refused(avatar_file, tmp_path):
    parts = load_avatar(avatar_file)
    t = dict(parts.tensors)
    t["eyes_open"] = torch.zeros(3)  # a tensor of another shape, header left as it was
    save_file(t, str(tmp_path / "reshaped.avatar"), metadata={META_KEY: json.dumps(parts.meta)})
    with pytest.raises(AvatarError, match="eyes_open"):
        load_avatar(tmp_path / "reshaped.avatar")
    t = dict(parts.tensors)
    t["eyes_open"] = t["eyes_open"] + 0.5  # same shape, other values: only the checksum can tell
    save_file(t, str(tmp_path / "altered.avatar"), metadata={META_KEY: json.dumps(parts.meta)})
    with pytest.raises(AvatarError, match="checksum"):
        load_avatar(tmp_path / "altered.avatar")


def test_save_roundtrip_is_exact_and_atomic(avatar_file, tmp_path):
    parts = load_avatar(avatar_file)
    out = save_avatar(parts, tmp_path / "copy.avatar")
    again = load_avatar(out)
    assert again.meta["checksum"] == parts.meta["checksum"]
    for k, v in parts.tensors.items():
        assert torch.equal(v, again.tensors[k]), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.avatar"]
    # No pickle: the file is safetensors only (its first 8 bytes are the header length, then JSON).
    raw = out.read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x04\x95" not in raw[:_header_end(out)]
    shutil.copy(out, tmp_path / "x.avatar")
    assert load_file(str(tmp_path / "x.avatar")).keys() == parts.tensors.keys()


# -- damaged or crafted metadata -------------------------------------------------------------------------------------
def _craft(parts, path, edit, rechecksum: bool = True):
    """`parts`' tensors with metadata edited by `edit(meta)`, its checksum recomputed (as an attacker would) unless
    told not to, written with safetensors' own API."""
    meta = json.loads(json.dumps(parts.meta))
    edit(meta)
    if rechecksum and "checksum" in meta:
        meta["checksum"] = avatar_checksum(parts.tensors, meta)
    save_file(parts.tensors, str(path), metadata={META_KEY: json.dumps(meta)})
    return path


def _set(path: str, value):
    def edit(meta):
        *keys, last = path.split(".")
        d = meta
        for k in keys:
            d = d[k]
        d[last] = value
    return edit


def _delete(path: str):
    def edit(meta):
        *keys, last = path.split(".")
        d = meta
        for k in keys:
            d = d[k]
        del d[last]
    return edit


def _nested(n: int):
    v = []
    for _ in range(n):
        v = [v]
    return v


CRAFTED = [  # (what, edit, expected message)
    ("fps infinite", _set("fps", float("inf")), r"fps is Infinity, expected a finite number from 1 to 240"),
    ("fps NaN", _set("fps", float("nan")), r"fps is NaN"),
    ("fps 1000", _set("fps", 1000.0), r"fps is 1000.0, expected"),
    ("fps a string", _set("fps", "25"), r'fps is "25", expected a finite number'),
    ("n_motion a bool", _set("n_motion", True), r"n_motion is true, expected an integer"),
    ("chunk 0", _set("config.render.chunk", 0), r"config.render.chunk is 0, expected an integer from 1"),
    ("grid resolution of 11 GB", _set("config.render.grid_resolution", 1400),
     r"config.render.grid_resolution is 1400, expected an integer from 1 to 512"),
    ("grid resolution unlike the stored grid", _set("config.render.grid_resolution", 500),
     r"grid_resolution is 500 but the stored occupancy grid has"),
    ("hash grid of 2^31 parameters", _set("config.head.log2_table_size", 26), r"config.head asks for a hash grid of"),
    ("intrinsics of 43 GB", lambda m: m["intrinsics"].update(width=100000, height=100000),
     r"intrinsics.width is 100000, expected an integer from 8 to 4096"),
    ("intrinsics for another size", lambda m: m["intrinsics"].update(width=64), r"intrinsics are for 64x48"),
    ("negative focal length", _set("intrinsics.fx", -5.0), r"intrinsics.fx is -5.0"),
    ("intrinsics a list", _set("intrinsics", [1, 2]), r"intrinsics is \[1, 2\], expected an object"),
    ("size of zero", _set("size", [0, 0]), r"size is \[0, 0\], expected a list of 2 integers"),
    ("head box inside out", _set("head_aabb", [1, 1, 1, 0, 0, 0]), r"head_aabb is \[1, 1, 1, 0, 0, 0\]"),
    ("missing fps", _delete("fps"), r"the metadata lacks the field fps"),
    ("missing config.render.chunk", _delete("config.render.chunk"), r"lacks the field config.render.chunk"),
    ("missing checksum", _delete("checksum"), r"lacks the field checksum"),
    ("unknown config setting", _set("config.render.turbo", 1), r"unknown setting\(s\) config.render.turbo"),
    ("config of the wrong type", _set("config.render.step_size", "small"), r"config.render.step_size is \"small\""),
    ("unknown motion model setting", _set("motion_model.model.layers", 1000),
     r"unknown motion model setting\(s\) layers"),
    ("motion model too wide", _set("motion_model.model.hidden", 10 ** 6), r"motion_model.model.hidden is 1000000"),
    ("adapter points not integers", _set("adapter.points", ["a"]), r"adapter.points is \[\"a\"\]"),
    ("deep JSON", _set("figures", _nested(40)), r"nested over 16 levels deep"),
]


@pytest.mark.parametrize("what,edit,expected", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_metadata_is_refused_before_any_tensor_is_read(avatar_file, tmp_path, monkeypatch, what, edit,
                                                               expected):
    import safetensors.torch

    parts = load_avatar(avatar_file)
    bad = _craft(parts, tmp_path / "crafted.avatar", edit)

    def no_tensors(*a, **k):
        raise AssertionError("the tensors were read before the metadata was refused")

    # load_avatar reads the tensors (the only allocation that follows the file's content) after every check of the
    # header: a refusal must come before it.
    monkeypatch.setattr(safetensors.torch, "load_file", no_tensors)
    with pytest.raises(AvatarError, match=expected) as e:
        load_avatar(bad)
    assert e.value.hint


def test_an_edited_field_fails_the_checksum(avatar_file, tmp_path):
    parts = load_avatar(avatar_file)
    # fps 25 -> 85: in range, so only the checksum can tell (it rendered a wrong video silently in format 3).
    bad = _craft(parts, tmp_path / "fps.avatar", _set("fps", 85.0), rechecksum=False)
    with pytest.raises(AvatarError, match="checksum mismatch.*metadata or the tensors"):
        load_avatar(bad)
    bad = _craft(parts, tmp_path / "blinks.avatar", _set("blink_rate_per_min", 30.0), rechecksum=False)
    with pytest.raises(AvatarError, match="checksum mismatch"):
        load_avatar(bad)
    # Re-ordering the document's keys is not an edit: the checksum covers its canonical form.
    meta = dict(reversed(list(parts.meta.items())))
    save_file(parts.tensors, str(tmp_path / "reordered.avatar"), metadata={META_KEY: json.dumps(meta, indent=2)})
    assert load_avatar(tmp_path / "reordered.avatar").meta == parts.meta


def test_oversized_or_malformed_headers_are_refused(avatar_file, tmp_path):
    huge = tmp_path / "huge_header.avatar"
    huge.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(AvatarError, match="header would be 1,099,511,627,776 bytes"):
        load_avatar(huge)
    parts = load_avatar(avatar_file)
    big = _craft(parts, tmp_path / "big.avatar", _set("figures", {"padding": "x" * (5 << 20)}))
    with pytest.raises(AvatarError, match="header would be 5,2"):
        load_avatar(big)
    # Deeper than Python's JSON parser goes (about 1000 levels): refused, not a RecursionError.
    deep = json.dumps(dict(parts.meta, figures="@")).replace('"@"', "[" * 5000 + "]" * 5000)
    for text, expected in (("[1, 2]", "list, not a JSON object"), ("{nope", "not valid JSON"),
                           (deep, "nested over 16 levels deep")):
        save_file(parts.tensors, str(tmp_path / "m.avatar"), metadata={META_KEY: text})
        with pytest.raises(AvatarError, match=expected):
            load_avatar(tmp_path / "m.avatar")


def test_the_cli_refuses_a_crafted_avatar_with_exit_2(avatar_file, tmp_path, capsys):
    from nerf_talk.cli import main

    parts = load_avatar(avatar_file)
    bad = _craft(parts, tmp_path / "crafted.avatar", _set("config.render.grid_resolution", 1400))
    rc = main(["render", str(bad), "--text", "hello", "-o", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "config.render.grid_resolution is 1400" in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_a_finetuned_motion_model_round_trips(avatar_file, tmp_path):
    """An avatar whose embedded motion network was fine-tuned on the person loads that network back (what
    nerf-talk fit writes when the fine-tune wins on the clip's held-out tail)."""
    import numpy as np

    from nerf_talk.avatar import load_motion_model, motion_model_parts
    from nerf_talk.motion.model import MotionModel

    parts = load_avatar(avatar_file)
    generic = load_motion_model(parts)
    tuned = MotionModel(generic.net, generic.basis, generic.vocab, generic.viseme_motion,
                        dict(generic.meta, finetuned={"frames": 900, "steps": 75}))
    with torch.no_grad():
        for p in tuned.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mm_t, mm_header = motion_model_parts(tuned)
    tensors = {k: v for k, v in parts.tensors.items() if not k.startswith("motion_model.")}
    tensors.update({f"motion_model.{k}": v for k, v in mm_t.items()})
    report = {"used": True, "steps": 75, "tail_opening_corr": {"generic": 0.3, "finetuned": 0.5}}
    save_avatar(type(parts)(tensors, dict(parts.meta, motion_model=mm_header, motion_finetune=report)),
                tmp_path / "tuned.avatar")
    loaded = load_avatar(tmp_path / "tuned.avatar")
    assert loaded.meta["motion_finetune"] == report
    back = load_motion_model(loaded)
    assert back.meta["finetuned"] == {"frames": 900, "steps": 75}
    for (name, a), b in zip(tuned.net.state_dict().items(), back.net.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)  # stored as float16
    assert not torch.equal(back.net.inp.weight, generic.net.inp.weight)
    bad = dict(loaded.meta, motion_finetune={"used": "yes"})
    with pytest.raises(AvatarError, match="motion_finetune.used"):
        save_avatar(type(parts)(loaded.tensors, bad), tmp_path / "bad.avatar")
        load_avatar(tmp_path / "bad.avatar")
