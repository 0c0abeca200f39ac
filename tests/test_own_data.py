"""Your own data (issue 29): `densreg train --images/--table`, the recorded transform, and its use by
eval, score, sample and exports. Folders and tables are written here, in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import densreg
from densreg.app.cli import cli
from densreg.app.own_data import split_indices
from densreg.registry.checkpoint import read_header
from densreg.registry.transforms import Transform, data_fingerprint
from densreg.registry.testing import single_torch_thread  # noqa: F401


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def refused(*args, match):
    result = run(*args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.output
    return lines[0]


def pictures(n=12, size=(6, 5), seed=0):
    """8-bit grey pictures (n, H, W) with values spread over 0..255."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size), dtype=np.uint8)


def write_folder(root, grey, suffixes=(".png", ".bmp", ".tiff")):
    """Two class subfolders, a mix of lossless picture formats; returns the files in sorted path order."""
    files = []
    for i, picture in enumerate(grey):
        path = root / ("good" if i % 2 else "bad") / f"p{i:02d}{suffixes[i % len(suffixes)]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path)
        files.append(path)
    return sorted(files)


# -- the transform ---------------------------------------------------------------------------------
def test_transform_round_trips_through_json_and_states_its_rules():
    images = Transform("images", (1, 4, 3), 2, "ab" * 32, resize="lanczos", classes=("a", "b"), items=7)
    again = Transform.from_dict(json.loads(json.dumps(images.to_dict())))
    assert again == images
    assert "floor(g*2/256)" in images.rule and "g >= 128 is 1" in images.rule and "Lanczos" in images.rule
    assert images.levels(np.array([0, 127, 128, 255], dtype=np.uint8)).tolist() == [0, 0, 1, 1]
    four = Transform("images", (1, 1, 4), 4, "0" * 64)
    levels = four.levels(np.arange(256, dtype=np.uint8))
    assert (four.levels(four.pictures(levels)) == levels).all()  # the inverse lands in the same bin
    with pytest.raises(ValueError, match="kind"):
        Transform.from_dict({**images.to_dict(), "kind": "audio"})
    with pytest.raises(ValueError, match="fingerprint"):
        Transform.from_dict({k: v for k, v in images.to_dict().items() if k != "fingerprint"})


def test_table_transform_standardizes_by_training_rows_and_inverts():
    rows = np.array([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0], [2.0, 20.0, 5.0]])
    table = Transform.fit_table(rows, ["a", "b", "c"])
    assert table.mean == (2.0, 20.0, 5.0) and table.std[2] == 1.0  # a constant column keeps std 1
    z = table.standardize(rows)
    assert z.shape == (3, 1, 1, 3) and np.allclose(z[..., 0].ravel(), [-1.2247449, 1.2247449, 0], atol=1e-6)
    assert np.allclose(table.unstandardize(z), rows)
    assert table.log_jacobian == pytest.approx(-np.log(table.std).sum())
    assert Transform.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    with pytest.raises(densreg.DataError, match="rows of 3 values"):
        table.standardize(rows[:, :2])


def test_fingerprint_changes_with_any_value_shape_or_dtype():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    b = a.copy()
    b[2, 3] += 1
    assert data_fingerprint(a) == data_fingerprint(a.copy())
    assert len({data_fingerprint(a), data_fingerprint(b), data_fingerprint(a.reshape(4, 3)),
                data_fingerprint(a.astype(np.int16))}) == 4


def test_split_is_seeded_and_keeps_a_training_item():
    train, valid = split_indices(10, 0.3, seed=1)
    assert len(valid) == 3 and sorted([*train, *valid]) == list(range(10))
    assert np.array_equal(split_indices(10, 0.3, seed=1)[1], valid)
    assert not np.array_equal(split_indices(10, 0.3, seed=2)[1], valid)
    assert len(split_indices(1, 0.9, 0)[0]) == 1


# -- train --images --------------------------------------------------------------------------------
def test_train_on_a_picture_folder_counts_exactly_and_records_the_transform(tmp_path):
    grey = pictures()
    files = write_folder(tmp_path / "parts", grey)
    out = tmp_path / "m.safetensors"
    result = ok("train", "bernoulli", "--images", tmp_path / "parts", "--valid-fraction", 0, "--labels-from-folders",
                "--out", out)
    assert "12 images from" in result.output and "bad (6), good (6)" in result.output
    model, info = densreg.load_checkpoint(out)
    transform = Transform.from_dict(info.transform)
    ordered = np.stack([np.asarray(Image.open(f)) for f in files])  # the reader's order: sorted paths
    assert transform.fingerprint == data_fingerprint(ordered[:, None])
    assert transform.event_shape == (1, 6, 5) and transform.classes == ("bad", "good")
    levels = (ordered >= 128).astype(np.int64)[:, None]
    ones = levels.sum(0)  # bernoulli's counting with add-one smoothing, by hand
    p = (ones + 1.0) / (len(levels) + 2.0)
    expected = np.where(levels == 1, np.log(p), np.log1p(-p)).reshape(len(levels), -1).sum(1)
    import torch

    assert np.allclose(model.log_prob(torch.from_numpy(levels)).numpy(), expected, atol=1e-5)
    evaluated = json.loads(ok("eval", out, "--images", tmp_path / "parts", "--json").stdout)
    assert evaluated["nll_nats"] == pytest.approx(-expected.mean(), abs=1e-4)


def test_checkpoint_and_export_apply_the_same_transform(tmp_path):
    grey = pictures(10, size=(4, 4))
    write_folder(tmp_path / "train", grey, (".png",))
    new = pictures(5, size=(8, 8), seed=3)  # another size: the recorded --resize scales them
    write_folder(tmp_path / "new", new, (".png", ".jpg"))
    out, folder = tmp_path / "m.safetensors", tmp_path / "export"
    ok("train", "markov", "--images", tmp_path / "train", "--shape", "1,4,4", "--resize", "--categories", 3,
       "--out", out)
    ok("export", out, "--out", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["transform"] == densreg.load_checkpoint(out)[1].transform
    rows = {}
    for source in (out, folder):
        csv = tmp_path / f"{source.name}.csv"
        ok("score", source, "--images", tmp_path / "new", "--out", csv)
        rows[source.name] = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=(2, 3))
    assert np.allclose(rows[out.name], rows[folder.name], atol=1e-4)
    exported = densreg.ExportedModel(folder)
    assert exported.transform.num_categories == 3 and exported.transform.resize == "lanczos"
    raw = np.stack([np.asarray(Image.open(f).convert("L").resize((4, 4), Image.LANCZOS))
                    for f in sorted((tmp_path / "new").rglob("*.*"))])[:, None]
    assert np.allclose(exported.nll(exported.prepare(raw)), rows[folder.name][:, 1], atol=1e-4)


@pytest.mark.parametrize("make, match", [
    (lambda d: (d / "x" / "empty.png").write_bytes(b""), "empty.png is empty"),
    (lambda d: (d / "x" / "text.png").write_text("not a picture"), "text.png is not a readable image"),
    (lambda d: (d / "x" / "notes.txt").write_text("hello"), "notes.txt is not a picture"),
    (lambda d: Image.fromarray(np.zeros((3, 3), np.uint8)).save(d / "x" / "small.png"),
     "small.png is 3x3 pixels but the model takes 5x6; pass --resize"),
])
def test_bad_files_are_refused_in_one_line_naming_them(tmp_path, make, match):
    write_folder(tmp_path / "parts", pictures(4))
    (tmp_path / "parts" / "x").mkdir()
    make(tmp_path / "parts")
    out = tmp_path / "m.safetensors"
    refused("train", "bernoulli", "--images", tmp_path / "parts", "--out", out, match=match)
    assert not out.exists()


def test_globs_arrays_and_validation_images(tmp_path):
    grey = pictures(8)
    write_folder(tmp_path / "parts", grey, (".png",))
    ok("train", "bernoulli", "--images", str(tmp_path / "parts" / "good" / "*.png"), "--out", tmp_path / "g.safetensors")
    assert Transform.from_dict(densreg.load_checkpoint(tmp_path / "g.safetensors")[1].transform).items == 4
    np.save(tmp_path / "levels.npy", (grey >= 128).astype(np.uint8))
    ok("train", "bernoulli", "--images", tmp_path / "levels.npy", "--out", tmp_path / "a.safetensors")
    np.save(tmp_path / "bad.npy", np.full((2, 6, 5), 2, np.uint8))
    refused("train", "bernoulli", "--images", tmp_path / "bad.npy", "--out", tmp_path / "b.safetensors",
            match="values must lie in 0..1")
    result = ok("train", "bernoulli", "--images", tmp_path / "parts" / "good", "--valid-images",
                tmp_path / "parts" / "bad", "--out", tmp_path / "v.safetensors")
    assert "4 train, 4 valid" in result.output
    usage = run("train", "bernoulli", "--images", tmp_path / "parts", "--table", tmp_path / "x.csv", "--out",
                tmp_path / "c.safetensors")
    assert usage.exit_code == 2 and "exactly one of --dataset NAME, --images PATH or --table PATH" in usage.output


def test_a_checkpoint_without_a_transform_loads_and_a_changed_transform_is_caught(tmp_path):
    write_folder(tmp_path / "parts", pictures(4))
    out = tmp_path / "m.safetensors"
    ok("train", "bernoulli", "--images", tmp_path / "parts", "--out", out)
    model, info = densreg.load_checkpoint(out)
    plain = tmp_path / "plain.safetensors"
    densreg.save_checkpoint(plain, model, "bernoulli")  # as files written before transforms
    assert densreg.load_checkpoint(plain)[1].transform is None
    assert "transform" in read_header(out)[1]
    from densreg.registry.checkpoint import read_tensors, save_tensors

    weights, metadata = read_tensors(out)
    changed = json.loads(metadata["transform"])
    changed["num_categories"] = 3
    save_tensors(tmp_path / "edited.safetensors", weights, {**metadata, "transform": json.dumps(changed)})
    refused("eval", tmp_path / "edited.safetensors", "--images", tmp_path / "parts", match="was changed after")
    refused("sample", out, "--out", tmp_path / "h.png", "--csv", tmp_path / "x.csv",
            match="--csv writes the samples of a model trained with --table")


# -- train --table ---------------------------------------------------------------------------------
def write_csv(path, rows, header=("a", "b", "c"), bad=()):
    lines = [",".join(header)] if header else []
    for i, row in enumerate(rows):
        lines.append("1.0,,3.0" if i in bad else ",".join(map(repr, map(float, row))))
    path.write_text("\n".join(lines) + "\n")


def gaussian_rows(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)) @ np.array([[2.0, 0.5, 0], [0, 10.0, 1.0], [0, 0, 0.1]]) + [1.0, -50.0, 3.0]


def test_table_model_density_is_of_the_raw_rows(tmp_path):
    rows = gaussian_rows()
    write_csv(tmp_path / "t.csv", rows)
    out, folder = tmp_path / "g.safetensors", tmp_path / "export"
    ok("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--valid-fraction", 0, "--set", "components=1",
       "--out", out)
    info = densreg.load_checkpoint(out)[1]
    transform = Transform.from_dict(info.transform)
    assert np.allclose(transform.mean, rows.mean(0)) and np.allclose(transform.std, rows.std(0))
    assert transform.fingerprint == data_fingerprint(np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1))
    mean, cov = rows.mean(0), np.cov(rows.T, bias=True)  # the maximum-likelihood Gaussian of the raw rows
    diff = rows - mean
    expected = 0.5 * (np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff) + np.log(np.linalg.det(cov))
                      + 3 * np.log(2 * np.pi))
    ok("export", out, "--out", folder)
    for source in (out, folder):
        result = json.loads(ok("eval", source, "--table", tmp_path / "t.csv", "--json").stdout)
        assert result["nll_nats"] == pytest.approx(expected.mean(), abs=2e-3)
    ok("score", folder, "--table", tmp_path / "t.csv", "--out", tmp_path / "s.csv")
    scored = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, usecols=3)
    assert np.allclose(scored, expected, atol=2e-3)


def test_invalid_rows_are_refused_by_line_or_dropped_and_counted(tmp_path):
    rows = gaussian_rows(30)
    write_csv(tmp_path / "t.csv", rows, bad=(4, 9))
    out = tmp_path / "r.safetensors"
    refused("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--out", out,
            match="2 lines with missing, non-numeric or non-finite values (line 6, 11); fix them or pass --drop-invalid")
    result = ok("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--drop-invalid", "--set",
                "components=1", "--out", out)
    assert "30 rows" not in result.output and "28 rows of 3 columns" in result.output
    assert "2 invalid rows dropped" in result.output
    write_csv(tmp_path / "plain.csv", rows, header=None)
    ok("train", "gaussian-mixture", "--table", tmp_path / "plain.csv", "--columns", "3,1", "--set", "components=1",
       "--out", tmp_path / "p.safetensors")
    transform = Transform.from_dict(densreg.load_checkpoint(tmp_path / "p.safetensors")[1].transform)
    assert transform.columns == ("3", "1") and transform.event_shape == (1, 1, 2)
    refused("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--columns", "a,zz", "--out", out,
            match="has no column 'zz'")
    usage = run("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--categories", 3, "--out", out)
    assert usage.exit_code == 2 and "--categories apply to --images, not --table" in usage.output
    usage = run("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--perturb", 0.1, "--out", out)
    assert usage.exit_code == 2 and "a --table holds real values" in usage.output


def test_samples_of_a_table_model_are_written_in_the_tables_units(tmp_path):
    rows = gaussian_rows(100)
    write_csv(tmp_path / "t.csv", rows)
    out = tmp_path / "g.safetensors"
    ok("train", "gaussian-mixture", "--table", tmp_path / "t.csv", "--set", "components=1", "--out", out)
    ok("sample", out, "-n", 400, "--out", tmp_path / "g.png", "--csv", tmp_path / "s.csv", "--npz", tmp_path / "s.npz")
    drawn = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "s.csv").read_text().startswith("a,b,c\n")
    assert np.array_equal(np.load(tmp_path / "s.npz")["samples"], drawn)
    assert np.allclose(drawn.mean(0), rows.mean(0), atol=4 * rows.std(0) / np.sqrt(100))
    assert np.allclose(drawn.std(0), rows.std(0), rtol=0.25)


def test_parquet_tables_when_pyarrow_is_installed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = gaussian_rows(50)
    pq.write_table(pa.table({"a": rows[:, 0], "b": rows[:, 1], "c": rows[:, 2]}), tmp_path / "t.parquet")
    ok("train", "gaussian-mixture", "--table", tmp_path / "t.parquet", "--set", "components=1", "--out",
       tmp_path / "g.safetensors")


def test_folder_classes_become_feature_labels_and_training_pictures_a_reference(tmp_path):
    write_folder(tmp_path / "parts", pictures(8), (".png",))
    out = tmp_path / "n.safetensors"
    ok("train", "nade", "--images", tmp_path / "parts", "--labels-from-folders", "--set", "hidden=3", "--epochs", 1,
       "--out", out)
    ok("features", out, "--images", tmp_path / "parts", "--out", tmp_path / "f.npz")
    archive = np.load(tmp_path / "f.npz")
    assert archive["features"].shape == (8, 3) and archive["labels"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    (tmp_path / "parts" / "other").mkdir()
    Image.fromarray(pictures(1)[0]).save(tmp_path / "parts" / "other" / "x.png")
    refused("features", out, "--images", tmp_path / "parts", "--out", tmp_path / "g.npz",
            match="has the class folder 'other', which the model was not trained with (its classes: bad, good)")
    result = run("score", out, "--images", tmp_path / "parts", "--method", "typicality", "--reference-images",
                 tmp_path / "parts" / "good", "--json")
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)
    assert scored["images"] == 9 and scored["score"]["max"] >= 0


def test_the_runtime_prepares_raw_rows_as_the_checkpoint_records(tmp_path):
    rows = gaussian_rows(60)
    write_csv(tmp_path / "t.csv", rows)
    out, folder = tmp_path / "g.safetensors", tmp_path / "export"
    ok("train", "rnade", "--table", tmp_path / "t.csv", "--set", "hidden=4", "--set", "components=2", "--epochs", 2,
       "--out", out)
    ok("export", out, "--out", folder)
    model, info = densreg.load_checkpoint(out)
    exported = densreg.ExportedModel(folder)
    prepared = exported.prepare(rows)
    assert np.array_equal(prepared, Transform.from_dict(info.transform).standardize(rows))
    import torch

    with torch.no_grad():
        expected = model.log_prob(torch.from_numpy(prepared)).numpy()
    assert np.allclose(exported.log_prob(prepared), expected, atol=1e-4)
    plain = densreg.ExportedModel(folder)
    object.__setattr__(plain, "transform", None)
    with pytest.raises(densreg.ConfigError, match="records no transform"):
        plain.prepare(rows)


def test_npy_files_are_read_only_after_their_header_is_checked(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    refused("train", "bernoulli", "--images", tmp_path / "objects.npy", "--out", tmp_path / "m.safetensors",
            match="holds Python objects (pickle), which densreg never loads")
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)}
    with open(tmp_path / "huge.npy", "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\0" * 64)
    refused("train", "gaussian-mixture", "--table", tmp_path / "huge.npy", "--out", tmp_path / "m.safetensors",
            match="declares shape (1000000000000, 3) of float64 (24000000000000 bytes), but holds")
