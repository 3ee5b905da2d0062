"""The avatar file: one safetensors file with JSON metadata; damaged, foreign or altered files are refused with a
clear error; nothing is unpickled."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nerf_talk.avatar import META_KEY, AvatarError, load_avatar, save_avatar, tensor_checksum
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
    assert m["kind"] == "nerf_talk.avatar" and m["format_version"] == 3
    assert m["checksum"] == tensor_checksum(parts.tensors)
    assert parts.tensors["background"].dtype == torch.uint8
    assert m["fps"] == 25.0 and m["size"] == [48, 48]
    for key in ("intrinsics", "head_aabb", "config", "adapter", "motion_model", "blink_rate_per_min", "recipe"):
        assert key in m, key
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
    with pytest.raises(AvatarError, match="version 4"):
        save_file(parts.tensors, str(tmp_path / "v4.avatar"),
                  metadata={META_KEY: json.dumps(dict(parts.meta, format_version=4))})
        load_avatar(tmp_path / "v4.avatar")
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
