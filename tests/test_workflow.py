"""End-to-end: the real Snakemake workflow on the demo configuration, its start-up checks, the
documented command lines and partial rebuilds (dry runs on the finished demo)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_helpers import copy_workflow, snakemake

from hpa_pipeline.io.cells import read_cell_table
from hpa_pipeline.io.stores import open_store, read_strings


@pytest.mark.slow
@pytest.mark.demo  # the one end-to-end run of `make test`
def test_demo_writes_a_valid_submission_and_its_metrics(demo_run):
    from hpa_pipeline.kaggle.submission import read_submission

    check = json.loads((demo_run / "results/submission_check.json").read_text())
    table = (demo_run / "resources/demo_data/sample_submission.csv").read_text().splitlines()[1:]
    assert check["images"] == len(table) and check["detections"] == 19 * check["cells"] > 0
    assert check["empty_images"] == 1  # the demo's image without cells
    submission = read_submission(demo_run / "results/submission.csv")
    assert submission["ID"].tolist() == [line.split(",")[0] for line in table]
    sizes = {(int(w), int(h)) for w, h in zip(submission["ImageWidth"], submission["ImageHeight"])}
    assert (683, 512) in sizes  # the non-square test image keeps its true width and height
    metrics = json.loads((demo_run / "results/metrics.json").read_text())
    assert set(metrics["models"]) == set(yaml.safe_load((demo_run / "configs/demo.yaml").read_text())["models"])
    assert {entry["stage"] for entry in metrics["models"].values()} == {1, 2, 3}
    assert set(metrics["ensembles"]) == {"stage1", "stage2"}
    # the README's claim: every model and ensemble sits above chance, out-of-fold on the train images
    # (CPU runs are byte-deterministic, so this holds run after run); none reaches the ceiling
    train = {name: metrics["references"]["train"][name]["map"] for name in ("chance", "ceiling")}
    scored = {
        name: entry["out_of_fold"]["map"] for group in ("models", "ensembles") for name, entry in metrics[group].items()
    }
    assert {name for name, score in scored.items() if not train["chance"] < score < train["ceiling"]} == set()
    assert metrics["submission"]["map"] < metrics["references"]["test"]["ceiling"]["map"]
    summary = (demo_run / "results/metrics.tsv").read_text().splitlines()
    assert (
        summary[0].split("\t") == ["what", "name", "stage", "scored_on", "cell_map"]
        and len(summary) == 1 + 7 + 2 + 1 + 3 + 4
    )
    # the stage submissions (each ensemble, each submission member alone) follow the submission's row
    config = yaml.safe_load((demo_run / "configs/demo.yaml").read_text())
    stages = [*config["ensembles"], *config["submission"]["members"]]
    first = 1 + len(config["models"]) + len(config["ensembles"])
    assert [tuple(row.split("\t")[:4]) for row in summary[first : first + 1 + len(stages)]] == [
        ("submission", "submission.csv", "3", "test")
    ] + [
        ("stage_submission", name, str(1 if name == "stage1" else 2 if name == "stage2" else 3), "test")
        for name in stages
    ]
    assert set(metrics["stage_submissions"]) == set(stages)
    references = {
        (row.split("\t")[1], row.split("\t")[3]): float(row.split("\t")[4])
        for row in summary
        if row.startswith("reference")
    }
    for split in ("train", "test"):
        assert 0 < references[("chance", split)] < references[("ceiling", split)] <= 1
    assert set(metrics["references"]) == {"train", "test"}


@pytest.mark.slow
@pytest.mark.demo  # the one end-to-end run of `make test`
def test_the_submissions_figure_is_that_of_its_file_and_stage_submissions_are_made_like_it(demo_run, tmp_path):
    from hpa_pipeline.kaggle.metric import evaluate_submission
    from hpa_pipeline.submit.evaluation import read_test_truth
    from hpa_pipeline.submit.submission import make_submission

    rows = {
        tuple(row.split("\t")[:2]): row.split("\t")[4]
        for row in (demo_run / "results/metrics.tsv").read_text().splitlines()[1:]
    }
    truth = read_test_truth(demo_run / "resources/demo_data/truth")
    scored = evaluate_submission(demo_run / "results/submission.csv", truth).map
    assert rows[("submission", "submission.csv")] == f"{scored:.6f}"
    config = yaml.safe_load((demo_run / "configs/demo.yaml").read_text())
    stage1 = evaluate_submission(demo_run / "results/stages/stage1/submission.csv", truth).map
    assert rows[("stage_submission", "stage1")] == f"{stage1:.6f}"
    # the stage submissions' code made from the submission's members gives the submission, byte for byte
    members = config["submission"]["members"]
    predictions = [demo_run / f"results/models/{m}/fold{f}/test.zarr" for m in members for f in range(2)]
    make_submission(
        predictions,
        [demo_run / "results/test/cells/shard-0.zarr"],
        [demo_run / "results/test/masks/shard-0.zarr"],
        demo_run / "results/test/index.csv",
        config["submission"]["edge_area_threshold"],
        config["submission"]["center_area_threshold"],
        tmp_path / "members.csv",
    )
    assert (tmp_path / "members.csv").read_bytes() == (demo_run / "results/submission.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.demo  # the one end-to-end run of `make test`
def test_demo_preprocess_builds_every_store(demo_run):
    config = yaml.safe_load((demo_run / "configs" / "demo.yaml").read_text())
    train_ids = (demo_run / "resources/demo_data/train.csv").read_text().split("\n")[1:]
    n_train = len([line for line in train_ids if line])
    seen = []
    for shard in range(config["shards"]["train"]):
        table = read_cell_table(demo_run / f"results/train/cells/shard-{shard}.zarr")
        seen += table.ids
        crops = open_store(demo_run / f"results/train/crops_192/shard-{shard}.zarr", "crops")
        assert crops["crops"].shape == (table.n_cells, 8, 48, 48)
        for size in config["preprocess"]["image_sizes"]:
            images = open_store(demo_run / f"results/train/images_{size}/shard-{shard}.zarr", "images")
            assert read_strings(images, "ids") == table.ids
            assert images["images"].shape[1:] == (4, size, size)
    assert len(seen) == n_train
    # test masks stay at the original size, incl. the non-square image; the empty image has no cells
    masks = open_store(demo_run / "results/test/masks/shard-0.zarr", "masks")
    shapes = {tuple(masks["labels"][str(row)].shape) for row in range(len(read_strings(masks, "ids")))}
    assert (512, 683) in shapes and (512, 512) in shapes
    assert 0 in masks["n_cells"][:].tolist()
    assert "without any cell" in (demo_run / "logs/segment/test-0.log").read_text()


@pytest.mark.slow
@pytest.mark.demo  # the one end-to-end run of `make test`
def test_every_stage_saw_the_downloaded_extra_set_and_its_duplicates(demo_run):
    from hpa_pipeline.io.duplicates import read_duplicate_groups
    from hpa_pipeline.io.folds import read_folds
    from hpa_pipeline.io.predictions import read_predictions

    labels = (demo_run / "results/pubhpa/download/labels.csv").read_text().splitlines()
    public_ids = [line.split(",")[0] for line in labels[1:]]
    assert len(public_ids) == 8 and all(image_id.count("_") == 3 for image_id in public_ids)
    assert (demo_run / "results/pubhpa/download/failed.csv").read_text().splitlines() == ["ID,reason"]
    assert len((demo_run / "resources/demo_data/pubhpa/manifest.csv").read_text().splitlines()) == 1 + 8
    cells = read_cell_table(demo_run / "results/pubhpa/cells/shard-0.zarr")
    assert cells.ids == public_ids and set(cells.datasets) == {"pubhpa"} and cells.n_cells > 0
    for store in ("images_192", "images_384", "masks_192", "masks_384", "crops_192"):
        assert (demo_run / f"results/pubhpa/{store}/shard-0.zarr").is_dir()
    # the demo's public mirror holds a copy of a train image and of a test image
    groups = read_duplicate_groups(demo_run / "results/duplicates/groups.csv")
    members = [sorted(group["dataset"]) for _, group in groups.groupby("group")]
    assert sorted(members) == [["pubhpa", "test"], ["pubhpa", "train"]]
    folds = {name: read_folds(demo_run / f"results/folds/{name}.csv") for name in ("train", "pubhpa")}
    fold_of = {(name, i): f for name, table in folds.items() for i, f in zip(table["ID"], table["fold"])}
    shared = groups[groups["group"].isin(groups.loc[groups["dataset"] == "train", "group"])]
    assert len({fold_of[key] for key in zip(shared["dataset"], shared["ID"])}) == 1
    for model in ("cam_effnet_192", "cell_resnet_192_stage2", "cell_resnet_192_stage3"):
        oof = read_predictions(demo_run / f"results/models/{model}/oof.zarr")
        assert [key for key in oof.cells.image_keys() if key[0] == "pubhpa"] == [("pubhpa", i) for i in public_ids]
    for name in ("stage1", "stage2"):
        pseudo = read_predictions(demo_run / f"results/ensembles/{name}/oof.zarr")
        assert {key[0] for key in pseudo.cells.image_keys()} == {"train", "pubhpa"}
    log = (demo_run / "logs/train_model/cell_resnet_192_stage3-fold0.log").read_text()
    trained = re.search(r"fold 0: training on \d+ \(train (\d+), pubhpa (\d+)\) images", log)
    assert trained and int(trained.group(2)) == sum(folds["pubhpa"]["fold"] != 0)
    assert (demo_run / "results/report/segmentation/pubhpa.png").is_file()


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs a dry run of ``submission`` would run."""
    result = snakemake(workdir, "submission", "--configfile", "configs/demo.yaml", "--cores", "2", "-n", *args)
    output = result.stdout + result.stderr
    if "Nothing to be done" in output:
        return {}
    table = output[output.index("Job stats:") :]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE) if rule != "total"}


@pytest.mark.slow
@pytest.mark.demo  # the one end-to-end run of `make test`
def test_finished_workflow_reruns_nothing(demo_run):
    assert planned_jobs(demo_run) == {}
    # nor when only how jobs run changes: their threads, GPU sharing, the device
    assert planned_jobs(demo_run, "--config", "model_threads=2", "jobs_per_gpu=3", "train_device=cpu") == {}


@pytest.mark.slow
def test_forcing_one_stage_reruns_exactly_what_depends_on_it(demo_run):
    config = yaml.safe_load((demo_run / "configs/demo.yaml").read_text())
    cell_models = [name for name, model in config["models"].items() if model["kind"] == "cell"]
    jobs = planned_jobs(demo_run, "--forcerun", "crop_cells")
    # the crops feed only the cell models, and through their out-of-fold predictions every ensemble
    # with a cell model, so everything trained on one; never preprocessing upstream of the crops
    extra_shards = sum(extra["shards"] for extra in config["extra_train_sets"].values())
    assert jobs["crop_cells"] == len(config["preprocess"]["crop_image_sizes"]) * (
        config["shards"]["train"] + config["shards"]["test"] + extra_shards
    )
    for upstream in ("make_demo_data", "index_images", "resize_image", "segment", "resize_masks", "make_folds"):
        assert upstream not in jobs
    retrained, recombined = set(cell_models), set()
    while True:  # what depends on a retrained model, through ensembles and their pseudo labels
        recombined |= {name for name, members in config["ensembles"].items() if retrained & set(members)}
        trained_on = {name for name, model in config["models"].items() if model.get("pseudo_labels") in recombined}
        if trained_on <= retrained:
            break
        retrained |= trained_on
    # the demo: both stage-1 cell models, so stage 1 and 2 recombine, and all but the stage-1 CAM models retrain
    assert (len(retrained), recombined) == (len(config["models"]) - 2, {"stage1", "stage2"})
    assert jobs["train_model"] == config["folds"]["n_folds"] * len(retrained)
    assert jobs["average_ensemble"] == len(recombined)
    assert {"make_submission", "validate_submission", "evaluate"} <= set(jobs)


@pytest.mark.slow
def test_changing_one_model_retrains_only_it_and_what_depends_on_it(demo_run):
    config = yaml.safe_load((demo_run / "configs/demo.yaml").read_text())
    config["models"]["cell_resnet_192_stage3"]["lr"] = 0.002
    (demo_run / "configs/changed.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(demo_run, "submission", "--configfile", "configs/changed.yaml", "--cores", "2", "-n")
    output = result.stdout + result.stderr
    stats = output[output.index("Job stats:") :]
    jobs = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE) if rule != "total"}
    folds = config["folds"]["n_folds"]
    assert jobs == {
        "train_model": folds,
        "predict_valid": folds,
        "concat_valid": 1,
        "predict_test": folds,
        "fit_thresholds": 1,
        "image_predictions": 1,
        "make_submission": 1,
        "make_stage_submission": 1,  # the model's own stage submission
        "validate_submission": 1,
        "evaluate": 1,
        "submission": 1,
        "plot_training_curves": 1,
        "plot_metrics": 1,
    }
    assert set(re.findall(r"wildcards: model=(\w+)", output)) == {"cell_resnet_192_stage3"}
    assert "Params have changed since last execution" in output


@pytest.mark.slow
def test_editing_the_package_comments_retrains_nothing(demo_run, tmp_path):
    """Rules call the package through shell commands: its source is not a rerun trigger."""
    import hpa_pipeline

    package = Path(hpa_pipeline.__file__).parent
    copy = tmp_path / "edited" / "hpa_pipeline"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for module in copy.rglob("*.py"):
        module.write_text(module.read_text().replace('"""', '"""Edited. ', 1) + "\n# an edited comment\n")
    # Snakemake runs in a process whose hpa_pipeline is the edited copy (an editable install would
    # otherwise win over PYTHONPATH)
    runner = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hpa_pipeline', {str(copy / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(copy)!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['hpa_pipeline'] = module\n"
        "spec.loader.exec_module(module)\n"
        "import hpa_pipeline.config\n"
        "print('package docstring:', hpa_pipeline.config.__doc__.splitlines()[0])\n"
        "from snakemake.cli import main\n"
        "sys.argv = ['snakemake', 'submission', '--configfile', 'configs/demo.yaml', '--cores', '2', '-n']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", runner], cwd=demo_run, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert "package docstring: Edited." in output
    assert "Nothing to be done" in output, output[-3000:]


@pytest.mark.parametrize(
    "args",
    [
        ["submission", "--configfile", "configs/demo.yaml", "--cores", "12", "--resources", "gpu=3"],
        ["--configfile", "configs/demo.yaml", "--cores", "12", "--resources", "gpu=3", "--", "submission"],
        ["--resources", "gpu=3", "--configfile", "configs/demo.yaml", "--cores", "12", "submission"],
        ["submission", "--configfile", "configs/demo.yaml"],  # cores and gpu from profiles/default
    ],
    ids=["target-first", "double-dash", "single-value-option-last", "profile-defaults"],
)
def test_documented_command_lines_run(tmp_path, args):
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", *args)
    assert re.search(r"^submission\s+1$", result.stdout, re.MULTILINE)


def dry_run_jobs(workdir: Path, target: str, config: dict) -> dict[str, int]:
    """Rule -> jobs of a dry run of ``target`` from scratch with ``config``."""
    (workdir / "configs/dry.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, target, "--configfile", "configs/dry.yaml", "-n")
    table = result.stdout[result.stdout.index("Job stats:") :]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_stage_submissions_and_member_weights_plan_their_jobs(tmp_path):
    workdir = copy_workflow(tmp_path)
    demo = yaml.safe_load((workdir / "configs/demo.yaml").read_text())
    folds, members = demo["folds"]["n_folds"], len(demo["models"])
    submitted = len(demo["submission"]["members"])
    stages = len(demo["ensembles"]) + submitted  # 2 + 1
    # with truth, evaluate scores every stage submission: every model predicts the test set
    jobs = dry_run_jobs(workdir, "submission", demo)
    assert (jobs["total"], jobs["predict_test"], jobs["make_stage_submission"]) == (99, folds * members, stages)
    assert "fit_weights" not in jobs and "fit_submission_weights" not in jobs
    weighted = dry_run_jobs(workdir, "submission", {**demo, "ensemble": {"method": "weights"}})
    assert (weighted["total"], weighted["fit_weights"], weighted["fit_submission_weights"]) == (102, 2, 1)
    without_truth = {key: value for key, value in demo.items() if key != "truth_dir"}
    jobs = dry_run_jobs(workdir, "submission", without_truth)
    assert (jobs["total"], jobs["predict_test"], "make_stage_submission" in jobs) == (82, folds * submitted, False)
    jobs = dry_run_jobs(workdir, "stage_submissions", without_truth)
    assert (jobs["total"], jobs["make_stage_submission"], "make_submission" in jobs) == (80, stages, False)


@pytest.mark.parametrize(
    ("target", "config", "method", "message"),
    [
        ("stage_submissions", "configs/demo_2018.yaml", None, "task hpa2018-images has no per-cell submission"),
        ("bundle", "configs/demo.yaml", "rank_mean", "a bundle averages its members by mean"),
    ],
)
def test_what_a_task_or_method_cannot_build_is_refused_by_name(tmp_path, target, config, method, message):
    workdir = copy_workflow(tmp_path)
    settings = yaml.safe_load((workdir / config).read_text())
    if method:
        settings["ensemble"] = {"method": method}
    (workdir / "configs/dry.yaml").write_text(yaml.safe_dump(settings))
    result = snakemake(workdir, target, "--configfile", "configs/dry.yaml", "-n", check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr


def test_target_after_resources_is_swallowed_as_the_readme_warns(tmp_path):
    workdir = copy_workflow(tmp_path)
    result = snakemake(
        workdir,
        "--configfile",
        "configs/demo.yaml",
        "--cores",
        "12",
        "--resources",
        "gpu=3",
        "submission",
        "-n",
        check=False,
    )
    assert result.returncode != 0
    assert "dictionary update sequence element" in result.stdout + result.stderr


def write_config(workdir: Path, **changes) -> None:
    config = yaml.safe_load((workdir / "configs" / "demo.yaml").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, key = dotted.split(".")
        for parent in parents:
            node = node[parent]
        node[key] = value
    (workdir / "configs" / "bad.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shards.train": "two"}, "'two' is not of type 'integer'"),
        ({"preprocess.crop_size": 4}, "crop_size"),
        ({"segment.backend": "cellpose"}, "'cellpose' is not one of"),
        (
            {"preprocess.crop_image_sizes": [100]},
            "preprocess.crop_image_sizes: 100 is not one of preprocess.image_sizes",
        ),
        ({"segment.inputs.train.source": 999}, "segment.inputs.train.source: 999"),
        ({"segment.backend": "hpacellseg"}, "segment.hpacellseg.nuclei_model must be set"),
        ({"preprocess.unknown_key": 1}, "unknown_key"),
        ({"ensembles.stage1": ["cam_effnet_192", "ghost"]}, "ensembles.stage1: unknown model 'ghost'"),
        ({"models.cam_effnet_192.epochs": "many"}, "'many' is not of type 'integer'"),
        ({"extra_train_sets.pubhpa.table": "pubhpa.csv"}, "extra_train_sets.pubhpa: give either `table`"),
        ({"extra_train_sets.pubhpa.download.workers": 0}, "0 is less than the minimum of 1"),
        ({"duplicates.max_distance": 40}, "40 is greater than the maximum of 32"),
    ],
)
def test_bad_config_is_reported_before_anything_runs(tmp_path, changes, message):
    workdir = copy_workflow(tmp_path)
    write_config(workdir, **changes)
    result = snakemake(workdir, "preprocess", "--configfile", "configs/bad.yaml", "-n", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_workflow_lints_clean(tmp_path):
    workdir = copy_workflow(tmp_path)
    for config in ("workflow_config.yaml", "configs/demo.yaml", "workflow_2018.yaml", "configs/demo_2018.yaml"):
        result = snakemake(workdir, "--lint", "--configfile", config)
        assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.slow
def test_report_shows_curves_metrics_overlays_and_the_rule_graph(demo_run, tmp_path):
    snakemake(demo_run, "submission", "--configfile", "configs/demo.yaml", "--report", "report.html")
    html = (demo_run / "report.html").read_text()
    for section in ("Training curves", "Metrics", "Segmentation", "cell_resnet_192_stage3", "metrics.tsv", "rulegraph"):
        assert section in html, section
    # the figures are those of the run's own numbers: every fold of every model, every metrics row
    from hpa_pipeline.report import plot_stage_metrics, plot_training_curves

    config = yaml.safe_load((demo_run / "configs/demo.yaml").read_text())
    folds = range(config["folds"]["n_folds"])
    for model in config["models"]:
        metrics = [demo_run / f"results/models/{model}/fold{fold}/metrics.csv" for fold in folds]
        plot_training_curves(metrics, [f"fold{fold}" for fold in folds], model, tmp_path / f"{model}.png")
        drawn = (demo_run / f"results/report/training/{model}.png").read_bytes()
        assert drawn == (tmp_path / f"{model}.png").read_bytes(), model
    plot_stage_metrics(demo_run / "results/metrics.tsv", tmp_path / "metrics.png")
    assert (demo_run / "results/report/metrics.png").read_bytes() == (tmp_path / "metrics.png").read_bytes()
