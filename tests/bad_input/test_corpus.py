"""The bad-input corpus: one row per case, run through the real ``permerge`` entry point.

Each row is ``(id, setup, args, needle)``: ``setup(ctx)`` creates the bad input under
``ctx.tmp`` (or is None), ``args`` is the command line with ``{tmp}``, ``{a}``, ``{b}`` (two
tiny untrained models, different seeds) and ``{data}`` (the shared data root) filled in, and
``needle`` must appear in the single ``error:`` line. Every case asserts exit status 2, exactly
one stderr line starting with ``error:``, no traceback, and no partial output: nothing under
``ctx.tmp`` changes after the setup (no file, folder or temp file appears, none is altered).

Adding a case is one line. The command runs in this process (``permerge.cli.main``), so a
case costs milliseconds unless its command computes before failing; a traceback would surface
as the test's own exception. Cases that need a real process (file-size limits, signals) live
below the table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from permerge.reduce.reduced_set import META_KEY, ReducedSet

from ._helpers import one_line, save_tiny
from .test_bad_output import _permissions_enforced


@dataclass
class Ctx:
    tmp: Path
    a: Path
    b: Path
    data: Path


Setup = Callable[[Ctx], object] | None


# --- setups -------------------------------------------------------------------------------


def model_json(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    """A copy of model A (as ``{tmp}/m``) whose model.json is edited."""

    def setup(ctx: Ctx) -> None:
        shutil.copytree(ctx.a, ctx.tmp / "m")
        meta = json.loads((ctx.tmp / "m" / "model.json").read_text())
        edit(meta)
        (ctx.tmp / "m" / "model.json").write_text(json.dumps(meta))

    return setup


def raw_model_json(text: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        shutil.copytree(ctx.a, ctx.tmp / "m")
        (ctx.tmp / "m" / "model.json").write_text(text)

    return setup


def float8_weights(ctx: Ctx) -> None:
    shutil.copytree(ctx.a, ctx.tmp / "m")
    state = load_file(str(ctx.tmp / "m" / "model.safetensors"))
    state["1.weight"] = state["1.weight"].to(torch.float8_e4m3fn)
    save_file(state, str(ctx.tmp / "m" / "model.safetensors"))


def npz_bomb(ctx: Ctx) -> None:
    """An npz of a few hundred bytes whose header claims 10^13 bytes of images."""
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 1000, 1000)})
    labels = io.BytesIO()
    np.save(labels, np.zeros(10, np.int64))
    with zipfile.ZipFile(ctx.tmp / "bomb.npz", "w") as z:
        z.writestr("images.npy", header.getvalue() + b"\0" * 100)
        z.writestr("labels.npy", labels.getvalue())


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(ctx: Ctx) -> None:
    """A valid PNG header claiming 30000 x 30000 pixels (a decompression bomb), tiny on disk."""
    for cls in ("a", "b"):
        (ctx.tmp / "png" / cls).mkdir(parents=True)
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    row = b"\0" * 30001
    idat = zlib.compress(row * 4)  # the rest is missing: never decoded
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    (ctx.tmp / "png" / "a" / "x.png").write_bytes(bomb)
    (ctx.tmp / "png" / "b" / "y.png").write_bytes(bomb)


def npz_arrays(name: str, **arrays: np.ndarray) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        np.savez(ctx.tmp / name, **arrays)  # type: ignore[arg-type]

    return setup


def reduced_meta(key: str, value: object) -> Callable[[Ctx], None]:
    """A valid reduced set (``{tmp}/r.safetensors``) whose header metadata has ``key: value``."""

    def setup(ctx: Ctx) -> None:
        path = ctx.tmp / "r.safetensors"
        meta = {"method": "random", "ipc": 2, "source": "mnist", "num_classes": 10, "class_names": list("0123456789")}
        meta["normalization"] = {"mean": [0.0], "std": [1.0]}
        ReducedSet(torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 0, 1]), meta).save(path, grid=False)
        with safe_open(str(path), framework="pt") as f:
            record = json.loads(f.metadata()[META_KEY])
        record[key] = value
        save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(record)})
        (ctx.tmp / "r.json").unlink()

    return setup


def a_file(name: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.tmp / name).write_text("a file, not a folder")

    return setup


def symlink_loop(ctx: Ctx) -> None:
    os.symlink(ctx.tmp / "loop2", ctx.tmp / "loop1")
    os.symlink(ctx.tmp / "loop1", ctx.tmp / "loop2")


def read_only(name: str, with_model: bool = False) -> Callable[[Ctx], None]:
    """A read-only folder ``{tmp}/<name>`` (holding a copy of model A if ``with_model``)."""

    def setup(ctx: Ctx) -> None:
        if not _permissions_enforced():
            pytest.skip("root ignores file permissions")
        if with_model:
            shutil.copytree(ctx.a, ctx.tmp / name)
        else:
            (ctx.tmp / name).mkdir()
        (ctx.tmp / name).chmod(0o500)

    return setup


def copy_a(ctx: Ctx) -> None:
    shutil.copytree(ctx.a, ctx.tmp / "Acopy")


def grid_yaml(**fields: object) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        base: dict[str, object] = {
            "name": "t",
            "model": "mlp:8",
            "pairs": [["mnist@5", "fashion-mnist@5"]],
            "merges": [{"method": "wm"}],
        }
        (ctx.tmp / "grid.yaml").write_text(json.dumps({**base, **fields}))  # JSON is YAML

    return setup


def a_file_and_foreign_folder(ctx: Ctx) -> None:
    (ctx.tmp / "mine").mkdir()
    (ctx.tmp / "mine" / "notes.txt").write_text("the user's own file")


TRAIN = ["train", "-d", "mnist@5", "-m", "mlp:8", "--epochs", "1", "--data-root", "{data}", "-q"]
REDUCE = ["reduce", "-d", "mnist@5", "--method", "random", "--ipc", "1", "--data-root", "{data}", "-q"]
MERGE = ["merge", "{a}", "{b}", "--data-root", "{data}", "-q"]
INTERP = ["interpolate", "{a}", "{b}", "--points", "3", "--data-root", "{data}", "-q"]
TRAIN_SVHN = ["train", "-d", "svhn", *TRAIN[3:]]
BAD_SPEC = ["--datasets", "svhn"]  # fails only when data is loaded: an --out error must come first

CASES: list[tuple[str, Setup, list[str], str]] = [
    # 3. --out is checked before any work (a bad dataset spec after it proves the order)
    ("train-out-is-file", a_file("f"), [*TRAIN_SVHN, "-o", "{tmp}/f"], "{tmp}/f: File exists"),
    ("train-out-under-file", a_file("f"), [*TRAIN_SVHN, "-o", "{tmp}/f/o"], "Not a directory"),
    ("train-out-symlink-loop", symlink_loop, [*TRAIN, "-o", "{tmp}/loop1"], "{tmp}/loop1 as output folder: symlink"),
    (
        "merge-out-is-file",
        a_file("f"),
        [*MERGE, *BAD_SPEC, "-o", "{tmp}/f"],
        "create output folder {tmp}/f: File exists",
    ),
    ("merge-out-under-file", a_file("f"), [*MERGE, *BAD_SPEC, "-o", "{tmp}/f/o"], "{tmp}/f/o: Not a directory"),
    ("merge-out-symlink-loop", symlink_loop, [*MERGE, *BAD_SPEC, "-o", "{tmp}/loop1/x"], "symlink loop"),
    ("interpolate-out-is-file", a_file("f"), [*INTERP, *BAD_SPEC, "-o", "{tmp}/f"], "{tmp}/f: File exists"),
    ("interpolate-out-under-file", a_file("f"), [*INTERP, *BAD_SPEC, "-o", "{tmp}/f/o"], "Not a directory"),
    ("reduce-out-under-file", a_file("f"), [*REDUCE, "--method", "dm", "-o", "{tmp}/f/r.safetensors"], "Not a dir"),
    ("reduce-out-symlink-loop", symlink_loop, [*REDUCE, "-o", "{tmp}/loop1"], "symlink loop"),
    ("train-out-in-read-only", read_only("ro"), [*TRAIN_SVHN, "-o", "{tmp}/ro/o"], "{tmp}/ro/o: Permission denied"),
    (
        "train-out-read-only",
        read_only("ro", True),
        [*TRAIN_SVHN, "-o", "{tmp}/ro"],
        "write {tmp}/ro: Permission denied",
    ),
    ("merge-out-read-only", read_only("ro", True), [*MERGE, *BAD_SPEC, "-o", "{tmp}/ro"], "Permission denied"),
    ("interpolate-out-in-read-only", read_only("ro"), [*INTERP, *BAD_SPEC, "-o", "{tmp}/ro/o"], "Permission denied"),
    (
        "reduce-out-in-read-only",
        read_only("ro"),
        [*REDUCE, "--method", "dm", "-o", "{tmp}/ro/r.safetensors"],
        "Permission denied",
    ),  # fmt: skip
    ("merge-many-out-is-file", a_file("f"), ["merge-many", "{a}", "{b}", *BAD_SPEC, "-o", "{tmp}/f"], "File exists"),
    # the reuse policy: a folder holding the user's own files is never replaced (nor deleted)
    ("merge-out-holds-foreign-files", a_file_and_foreign_folder, [*MERGE, "-o", "{tmp}/mine"], "did not write (notes"),
    # 4. an input model is not overwritten silently
    ("merge-out-is-input", copy_a, ["merge", "{tmp}/Acopy", "{b}", "-q", "-o", "{tmp}/Acopy"], "overwrite the input"),
    ("merge-many-out-is-input", copy_a, ["merge-many", "{tmp}/Acopy", "{b}", "-o", "{tmp}/Acopy"], "--force"),
    # 6. divergence fails training, writes nothing
    ("train-diverges", None, [*TRAIN, "--lr", "1e10", "--epochs", "2", "-o", "{tmp}/o"], "training diverged"),
    ("train-diverges-json", None, [*TRAIN, "--lr", "1e10", "--epochs", "2", "--json", "-o", "{tmp}/o"], "lower --lr"),
    # 8. tracebacks that became one-line errors
    (
        "in-shape-negative",
        model_json(lambda m: m["config"].update(in_shape=[1, -28, 28])),
        ["eval", "{tmp}/m"],
        "in_shape",
    ),
    ("in-shape-huge", model_json(lambda m: m["config"].update(in_shape=[1, 1e10, 1e10])), ["eval", "{tmp}/m"], "4096"),
    ("hidden-huge", model_json(lambda m: m["config"].update(hidden=[1e12])), ["eval", "{tmp}/m"], "at most 1,000,000"),
    ("json-nested-100k", raw_model_json("[" * 100_000 + "]" * 100_000), ["eval", "{tmp}/m"], "nested too deeply"),
    ("float8-tensor", float8_weights, ["eval", "{tmp}/m"], "has dtype torch.float8_e4m3fn"),
    ("npz-header-bomb", npz_bomb, [*TRAIN, "-d", "npz:{tmp}/bomb.npz", "-o", "{tmp}/o"], "claims shape (10000000,"),
    ("png-bomb", png_bomb, [*TRAIN, "-d", "folder:{tmp}/png", "-o", "{tmp}/o"], "x.png: image too large"),
    (
        "reduced-num-classes",
        reduced_meta("num_classes", "abc"),
        ["eval", "{a}", "--datasets", "reduced:{tmp}/r.safetensors"],
        "num_classes must be",
    ),  # fmt: skip
    (
        "reduced-norm-mean",
        reduced_meta("normalization", {"mean": "x", "std": [1]}),
        [*TRAIN, "-d", "reduced:{tmp}/r.safetensors", "-o", "{tmp}/o"],
        "normalization must",
    ),  # fmt: skip
    (
        "reduced-class-names",
        reduced_meta("class_names", 5),
        [*TRAIN, "-d", "reduced:{tmp}/r.safetensors", "-o", "{tmp}/o"],
        "class_names must be",
    ),  # fmt: skip
    (
        "reduce-opt-seed",
        None,
        [*REDUCE, "--opt", "seed=3", "-o", "{tmp}/r.safetensors"],
        "not a method option; use --seed",
    ),  # fmt: skip
    (
        "reproduce-seeds-a",
        None,
        ["reproduce", "split-mnist", "--quick", "--seeds", "a", "--dry-run"],
        "--seeds expects",
    ),
    (
        "reproduce-seed-huge",
        None,
        ["reproduce", "split-mnist", "--quick", "--seeds", "1" + "0" * 23, "--dry-run"],
        "--seeds must",
    ),  # fmt: skip
    ("train-seed-huge", None, [*TRAIN, "--seed", "1" + "0" * 23, "-o", "{tmp}/o"], "--seed must be an integer in [0,"),
    ("merge-seed-huge", None, [*MERGE, "--seed", "1" + "0" * 23], "--seed must be an integer"),
    ("reduce-seed-negative", None, [*REDUCE, "--seed", "-1", "-o", "{tmp}/r.safetensors"], "--seed must be an integer"),
    ("train-mlp-huge", None, [*TRAIN, "-m", "mlp:100000000", "-o", "{tmp}/o"], "hidden widths must be at most"),
    # 11. smaller ones
    (
        "npz-two-per-class",
        npz_arrays("two.npz", images=np.zeros((20, 28, 28), np.uint8), labels=np.arange(20) % 10),
        ["eval", "{a}", "--datasets", "npz:{tmp}/two.npz"],
        "automatic 80/20 split is empty",
    ),  # fmt: skip
    (
        "npz-pixels-out-of-range",
        npz_arrays("neg.npz", images=np.full((30, 28, 28), -3.0), labels=np.arange(30) % 10),
        ["eval", "{a}", "--datasets", "npz:{tmp}/neg.npz"],
        "image values lie in [-3, -3]",
    ),  # fmt: skip
    (
        "ste-diverges-hint",
        None,
        [
            *MERGE,
            "--method",
            "ste",
            "--data",
            "mnist@2",
            "--opt",
            "lr=1e38",
            "--opt",
            "steps=20",
            "--opt",
            "eval_every=100",
        ],
        "lower --opt lr",
    ),  # fmt: skip
    (
        "executor-unknown",
        None,
        ["reproduce", "split-mnist", "--quick", "--executor", "foo", "-o", "{tmp}/o"],
        "unknown executor 'foo'",
    ),  # fmt: skip
    (
        "sweep-model-mlp0",
        grid_yaml(model="mlp:0"),
        ["sweep", "{tmp}/grid.yaml", "-o", "{tmp}/o", "--dry-run"],
        "hidden widths must be positive",
    ),  # fmt: skip
    (
        "sweep-model-unknown",
        grid_yaml(model="transformer"),
        ["sweep", "{tmp}/grid.yaml", "-o", "{tmp}/o", "--dry-run"],
        "unknown model 'transformer'",
    ),  # fmt: skip
    (
        "sweep-bad-dataset",
        grid_yaml(pairs=[["mnist", "svhn"]]),
        ["sweep", "{tmp}/grid.yaml", "-o", "{tmp}/o", "--dry-run"],
        "unknown dataset 'svhn'",
    ),  # fmt: skip
    (
        "sweep-too-many-seeds",
        grid_yaml(seeds=list(range(1001))),
        ["sweep", "{tmp}/grid.yaml", "-o", "{tmp}/o", "--dry-run"],
        "1,001 seeds; at most 1000",
    ),  # fmt: skip
    (
        "interpolate-points-huge",
        None,
        [*INTERP, "--points", "1000001", "-o", "{tmp}/o"],
        "--points must be an odd number from 3 to 1001",
    ),
    # cases covered before this corpus, one representative each (their own files hold the rest)
    ("unknown-dataset", None, [*TRAIN, "-d", "svhn@10", "-o", "{tmp}/o"], "unknown dataset 'svhn@10'"),
    ("unknown-method", None, [*MERGE, "--method", "magic"], "unknown merge method 'magic'"),
    ("bad-lam", None, [*MERGE, "--lam", "1.5"], "--lam must lie in [0, 1]"),
    ("epochs-0", None, [*TRAIN, "--epochs", "0", "-o", "{tmp}/o"], "invalid training option 'epochs'"),
    ("no-such-model", None, ["eval", "{tmp}/nothing"], "no such model file or folder"),
    ("bad-class-range", None, ["eval", "{a}", "--datasets", "mnist[5-1]"], "empty class range"),
    # the demo's budgets are checked before it trains anything
    *(
        (f"demo-{flag[2:]}-0", None, ["demo", flag, "0", "-o", "{tmp}/o"], f"Invalid value for '{flag}'")
        for flag in ("--epochs", "--merge-ipc", "--ste-steps", "--kd-steps")
    ),
]


@pytest.fixture
def ctx(tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path) -> Ctx:
    work = tmp_path / "w"
    work.mkdir()
    return Ctx(tmp=work, a=tiny_pair[0], b=tiny_pair[1], data=shared_data)


def tree(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``folder`` (hidden ones too), with its kind and content."""
    out: dict[str, tuple[str, bytes]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = ("link", os.readlink(p).encode())
        elif p.is_file():
            out[str(p.relative_to(folder))] = ("file", p.read_bytes())
        else:
            out[str(p.relative_to(folder))] = ("dir", b"")
    return out


def fill(args: list[str], ctx: Ctx) -> list[str]:
    return [a.format(tmp=ctx.tmp, a=ctx.a, b=ctx.b, data=ctx.data) for a in args]


@pytest.mark.parametrize(("setup", "args", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(ctx: Ctx, cli_error: Callable[..., str], setup: Setup, args: list[str], needle: str) -> None:
    if setup is not None:
        setup(ctx)
    try:
        before = tree(ctx.tmp)
        line = cli_error(*fill(args, ctx))
        assert needle.format(tmp=ctx.tmp) in line
        assert tree(ctx.tmp) == before, "the failed command left or changed files"
    finally:
        for p in ctx.tmp.rglob("*"):  # read-only cases: let pytest clean up
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o700)


def test_the_corpus_ids_are_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# --- the output folder is one unit (1, 2, 4, 5) -------------------------------------------------


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_reused_out_holds_exactly_the_last_run(ctx: Ctx, cli_error: Callable[..., str]) -> None:
    """wm, then average, then ensemble into one --out used to leave merge.json (ensemble) next
    to the average model and wm's permutation."""
    from permerge.cli import main

    out = ctx.tmp / "o"
    for method, files in (
        ("wm", ["merge.json", "model.json", "model.safetensors", "permutation.json", "permutation.safetensors"]),
        ("average", ["merge.json", "model.json", "model.safetensors"]),
        ("ensemble", ["merge.json"]),
    ):
        main(fill([*MERGE, "--method", method, "-o", "{tmp}/o"], ctx))
        assert _names(out) == files, method
        assert json.loads((out / "merge.json").read_text())["method"] == method
    assert _names(ctx.tmp) == ["o"]  # no staging folder or old copy left beside it


def test_force_replaces_an_input_folder(ctx: Ctx) -> None:
    from permerge.checkpoint import load_checkpoint
    from permerge.cli import main

    copy_a(ctx)
    args = ["merge", "{tmp}/Acopy", "{b}", "--method", "average", "-q", "--force", "-o", "{tmp}/Acopy"]
    main(fill([*args, "--data-root", "{data}"], ctx))
    assert load_checkpoint(ctx.tmp / "Acopy").meta["permerge_kind"] == "merged"


@pytest.fixture
def umask_002():  # type: ignore[no-untyped-def]
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_outputs_get_the_umask_mode(ctx: Ctx, umask_002: None) -> None:
    """Temp files from mkstemp (and safetensors' own files) are 0600; results on a shared
    filesystem must be readable by the group as the umask says."""
    from permerge.cli import main

    main(fill([*MERGE, "--method", "wm", "-o", "{tmp}/m"], ctx))
    main(fill([*REDUCE, "-o", "{tmp}/sets/r.safetensors"], ctx))
    for f in [*(ctx.tmp / "m").iterdir(), *(ctx.tmp / "sets").iterdir()]:
        assert f.stat().st_mode & 0o777 == 0o664, f
    assert (ctx.tmp / "m").stat().st_mode & 0o777 == 0o775


def _limited(limit_bytes: int) -> Callable[[], None]:
    def preexec() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return preexec


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
def test_a_full_disk_keeps_the_previous_output(ctx: Ctx, tmp_path: Path) -> None:
    """A real write failure in a real process (a file-size limit stands in for a full disk: both
    make safetensors raise its own SafetensorError, which used to escape as a traceback)."""
    from permerge.cli import main

    main(fill([*MERGE, "--method", "average", "-o", "{tmp}/o"], ctx))
    before = tree(ctx.tmp)
    env = {**os.environ, "PERMERGE_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "permerge", *fill([*MERGE, "--method", "wm", "-o", "{tmp}/o"], ctx)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=_limited(20_000),  # model.safetensors of mlp:16 is ~51 kB
    )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    line = one_line(p.stderr)
    assert line == f"error: cannot write {ctx.tmp / 'o'}: File too large; its previous contents are kept", line
    assert tree(ctx.tmp) == before


# --- divergence (6) and JSON ------------------------------------------------------------------


def test_json_output_never_holds_nan() -> None:
    from permerge._io import dumps

    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": (float("-inf"),)})) == {
        "a": None,
        "b": [None, 1.5],
        "c": [None],
    }


def test_diverged_training_prints_no_json(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    with pytest.raises(SystemExit) as e:
        main(fill([*TRAIN, "--lr", "1e10", "--epochs", "2", "--json", "-o", "{tmp}/o"], ctx))
    assert e.value.code == 2
    assert capsys.readouterr().out == ""
    assert not (ctx.tmp / "o").exists()


# --- data read as written (9, 10, 11) -----------------------------------------------------------


def test_spec_lists_split_outside_brackets(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import _split_list, main

    assert _split_list(["mnist[1,3,5],fashion-mnist[0-2]@4", " cifar10 "]) == [
        "mnist[1,3,5]",
        "fashion-mnist[0-2]@4",
        "cifar10",
    ]
    capsys.readouterr()
    main(fill(["eval", "{a}", "--datasets", "mnist[1,3,5],fashion-mnist", "--data-root", "{data}", "--json"], ctx))
    assert set(json.loads(capsys.readouterr().out)["per_dataset"]) == {"mnist[1,3,5]", "fashion-mnist"}
    main(fill([*MERGE, "--method", "am", "--data", "mnist[1,3]@2,fashion-mnist[1,3]@2", "--json"], ctx))
    assert json.loads(capsys.readouterr().out)["merge_data"] == ["mnist[1,3]@2", "fashion-mnist[1,3]@2"]


def test_16_bit_grey_png_is_one_channel_scaled(tmp_path: Path) -> None:
    from PIL import Image

    from permerge.data.readers import read_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((8, 8), 65535 if c == "a" else 257 * 100, np.uint16)).save(tmp_path / c / "0.png")
    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I;16")
    x, y, _ = read_folder(tmp_path)
    assert tuple(x.shape) == (2, 1, 8, 8)
    assert x[0].unique().tolist() == [255] and x[1].unique().tolist() == [100]


def test_uint16_npz_pixels_are_scaled_not_clipped(tmp_path: Path) -> None:
    from permerge.data.readers import read_npz

    images = np.zeros((4, 8, 8), np.uint16)
    images[1], images[2], images[3] = 257, 257 * 128, 65535
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(4))
    x, _ = read_npz(tmp_path / "d.npz")
    assert [int(v) for v in x.amax(dim=(1, 2, 3))] == [0, 1, 128, 255]


def test_datasets_as_a_string_in_model_json(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    model_json(lambda m: m.update(datasets="mnist"))(ctx)
    capsys.readouterr()
    main(fill(["eval", "{tmp}/m", "--data-root", "{data}", "--json"], ctx))
    assert list(json.loads(capsys.readouterr().out)["per_dataset"]) == ["mnist"]


def test_brackets_in_printed_paths_survive(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    capsys.readouterr()
    main(fill([*MERGE, "--method", "average", "-o", "{tmp}/[red]t"], ctx))
    out = capsys.readouterr().out
    assert f"saved to {ctx.tmp}/[red]t" in " ".join(out.split())


def test_bare_command_prints_help_and_no_empty_error(capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    with pytest.raises(SystemExit) as e:
        main([])
    captured = capsys.readouterr()
    assert e.value.code == 2
    assert "Usage" in captured.out + captured.err
    assert "error:" not in captured.err


def test_merge_many_takes_device_and_quiet(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    main(fill(["merge-many", "{a}", "{b}", "--device", "cpu", "-q", "--data-root", "{data}", "-o", "{tmp}/mm"], ctx))
    assert (ctx.tmp / "mm" / "model.safetensors").is_file()


# --- same-init pairs (12) -------------------------------------------------------------------------


def test_same_init_merge_says_so(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    from permerge.cli import main

    twin = save_tiny(ctx.tmp / "twin", seed=0, dataset="fashion-mnist")  # A's initialisation
    capsys.readouterr()
    main(fill(["merge", "{a}", str(twin), "--method", "wm", "--data-root", "{data}", "--json"], ctx))
    captured = capsys.readouterr()
    notes = json.loads(captured.out)["notes"]
    assert any("identity permutation" in n for n in notes) and any("cosine similarity 1.00" in n for n in notes)
    assert "note: the wm alignment is the identity permutation" in captured.err
    main(fill([*MERGE, "--method", "wm", "--json"], ctx))  # independent inits: nothing to say
    assert json.loads(capsys.readouterr().out)["notes"] == []
