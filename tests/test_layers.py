"""The layers of the code (docs/ARCHITECTURE.md), checked on every module's imports, those inside functions too.

A module may import from its own layer and the layers below, never from a layer above, and no chain of imports may
lead back to where it started. Lower layers know nothing of the higher ones, so each can be read, tested and reused
without them (preprocess runs without the avatar code; the renderer without the server)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cuda_ext", "preprocess", "nerf_talk")

# Bottom to top. A module belongs to the first layer with a prefix of its name (the longest prefixes come first
# where a package spans layers). The package `nerf_talk` itself (its __init__) sits at the bottom: it holds no code.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base: errors, settings, media and audio, kernels", (
        "nerf_talk.errors", "nerf_talk.config", "nerf_talk.recipes", "nerf_talk.media", "nerf_talk.lockfile",
        "nerf_talk.audio_features",
        "nerf_talk.av_sync", "nerf_talk.speech", "cuda_ext")),
    ("preprocess: video -> dataset", ("preprocess",)),
    ("fields, motion, sample clip", ("nerf_talk.fields", "nerf_talk.motion", "nerf_talk.sample_clip")),
    ("render: drive -> frames", ("nerf_talk.render",)),
    ("train: dataset -> fitted fields", ("nerf_talk.train",)),
    ("avatar: the file", ("nerf_talk.avatar",)),
    ("api, live engine, demo report", ("nerf_talk.api", "nerf_talk.live", "nerf_talk.demo")),
    ("front ends: eval, serve, cli", ("nerf_talk.eval", "nerf_talk.serve", "nerf_talk.cli")),
]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that `name` imports anywhere in its file (module level or inside functions)."""

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(resolve(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:  # `from pkg import module` names a module; `from module import name` does not
                found.add(resolve(f"{mod}.{a.name}") if f"{mod}.{a.name}" in known else resolve(mod))
    found.discard(None)
    found.discard(name)
    return found


def layer_of(name: str) -> int:
    if name == "nerf_talk":
        return 0
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, f"{name} is in no layer: add it to LAYERS (and docs/ARCHITECTURE.md)"
    return best[0]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer():
    for m in modules():
        layer_of(m)


def test_no_upward_imports():
    bad = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
           for m, targets in graph().items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The parser itself: an import inside a function counts, relative imports resolve."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from pkg.c import thing\n")
    (pkg / "b.py").write_text("")
    (pkg / "c.py").write_text("thing = 1\n")
    known = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py", "pkg.c": pkg / "c.py"}
    assert imports("pkg.a", pkg / "a.py", known) == {"pkg.b", "pkg.c"}


def test_front_ends_preprocess_through_the_api():
    """One entry to preprocessing above its layer, nerf_talk.api.preprocess, so that every front end (the CLI, the
    demo, fit, the studio's worker, the benches) measures a clip's sound/lip offset alike, with the motion model that
    preprocessing itself may not import. scripts/train_default_motion.py calls the pipeline directly on purpose (the
    clips that train a motion model are not aligned by the previous one)."""
    callers = [str(p.relative_to(ROOT)) for d in ("nerf_talk", "bench") for p in sorted((ROOT / d).rglob("*.py"))
               if "pipeline.run(" in p.read_text() and p.relative_to(ROOT).as_posix() != "nerf_talk/api.py"]
    assert not callers, f"call nerf_talk.api.preprocess instead of preprocess.pipeline.run in {callers}"
