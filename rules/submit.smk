# The submission and its validation, per-class thresholds and the test images' image-level predictions, and
# (with truth) the metrics. Task hpa2021-cells: test predictions per cell combined by ensemble.method, with
# area scaling, and what each stage would submit (scored by evaluate on the test images); task
# hpa2018-images: the thresholded image labels in the 2018 format (Id,Predicted).


rule fit_thresholds:
    input:
        oof=member_oofs(),
        index=[index_csv(dataset) for dataset in TRAIN_DATASETS],
        folds=[folds_csv(dataset) for dataset in TRAIN_DATASETS],
    output:
        THRESHOLDS_CSV,
    params:
        task=TASK,
        method=THRESHOLDS.get("method", "f1"),
        value=THRESHOLDS.get("value", 0.5),
    log:
        "logs/fit_thresholds/fit_thresholds.log",
    benchmark:
        "logs/benchmarks/fit_thresholds/fit_thresholds.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline fit-thresholds --oof {input.oof} --index {input.index} --folds {input.folds} "
        "--task {params.task} --method {params.method} --value {params.value} --out {output} > {log} 2>&1"


rule image_predictions:
    input:
        predictions=submission_predictions(),
        index=index_csv("test"),
        thresholds=THRESHOLDS_CSV,
    output:
        IMAGE_PREDICTIONS_CSV,
    params:
        task=TASK,
    log:
        "logs/image_predictions/image_predictions.log",
    benchmark:
        "logs/benchmarks/image_predictions/image_predictions.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline image-predictions --predictions {input.predictions} --index {input.index} "
        "--thresholds {input.thresholds} --task {params.task} --out {output} > {log} 2>&1"


if IMAGE_TASK:

    rule make_submission:
        input:
            image_predictions=IMAGE_PREDICTIONS_CSV,
            table=label_table("test"),
        output:
            SUBMISSION_CSV,
        log:
            "logs/make_submission/make_submission.log",
        benchmark:
            "logs/benchmarks/make_submission/make_submission.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline submit-images --image-predictions {input.image_predictions} --table {input.table} "
            "--out {output} > {log} 2>&1"

    rule validate_submission:
        input:
            submission=SUBMISSION_CSV,
            table=label_table("test"),
        output:
            SUBMISSION_CHECK,
        log:
            "logs/validate_submission/validate_submission.log",
        benchmark:
            "logs/benchmarks/validate_submission/validate_submission.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline validate-submission {input.submission} --task hpa2018-images --table {input.table} "
            "--report {output} > {log} 2>&1"

    rule evaluate:
        input:
            oof=[oof_store(model) for model in MODELS],
            ensembles=[ensemble_store(name) for name in ENSEMBLES],
            members=member_oofs(),
            index=[index_csv(dataset) for dataset in TRAIN_DATASETS],
            folds=[folds_csv(dataset) for dataset in TRAIN_DATASETS],
            thresholds=THRESHOLDS_CSV,
            image_predictions=IMAGE_PREDICTIONS_CSV,
            submission=SUBMISSION_CSV,
            truth=TRUTH_DIR or [],
        output:
            json=METRICS_JSON,
            tsv=report(METRICS_TSV, caption="../report/metrics.rst", category="Metrics"),
        params:
            scored=evaluation_options,
            seed=config["seed"],
        log:
            "logs/evaluate/evaluate.log",
        benchmark:
            "logs/benchmarks/evaluate/evaluate.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline evaluate-images {params.scored} --members {input.members} --index {input.index} "
            "--folds {input.folds} --thresholds {input.thresholds} --image-predictions {input.image_predictions} "
            "--submission {input.submission} --truth {input.truth}/test.csv --seed {params.seed} "
            "--out-json {output.json} --out-tsv {output.tsv} > {log} 2>&1"

elif ENSEMBLE_METHOD == "mean":

    rule make_submission:
        input:
            predictions=submission_predictions(),
            cells=all_shards(cells_store, ["test"]),
            masks=all_shards(masks_store, ["test"]),
            index=index_csv("test"),
        output:
            SUBMISSION_CSV,
        params:
            edge=SUBMISSION["edge_area_threshold"],
            center=SUBMISSION["center_area_threshold"],
        log:
            "logs/make_submission/make_submission.log",
        benchmark:
            "logs/benchmarks/make_submission/make_submission.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline submit --predictions {input.predictions} --cells {input.cells} --masks {input.masks} "
            "--index {input.index} --edge-area-threshold {params.edge} --center-area-threshold {params.center} "
            "--out {output} > {log} 2>&1"

else:

    rule make_submission:
        input:
            predictions=submission_predictions(),
            cells=all_shards(cells_store, ["test"]),
            masks=all_shards(masks_store, ["test"]),
            index=index_csv("test"),
            weights=SUBMISSION_WEIGHTS if ENSEMBLE_METHOD == "weights" else [],
        output:
            SUBMISSION_CSV,
        params:
            edge=SUBMISSION["edge_area_threshold"],
            center=SUBMISSION["center_area_threshold"],
            combine=combine_options(SUBMISSION_WEIGHTS),
        log:
            "logs/make_submission/make_submission.log",
        benchmark:
            "logs/benchmarks/make_submission/make_submission.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline submit --predictions {input.predictions} --cells {input.cells} --masks {input.masks} "
            "--index {input.index} --edge-area-threshold {params.edge} --center-area-threshold {params.center} "
            "{params.combine} --out {output} > {log} 2>&1"


if not IMAGE_TASK:

    # What each ensemble and each submission member alone would submit, made like the submission
    # (target stage_submissions; with truth, rule evaluate scores them on the test images).
    rule make_stage_submission:
        input:
            unpack(stage_submission_inputs),
            cells=all_shards(cells_store, ["test"]),
            masks=all_shards(masks_store, ["test"]),
            index=index_csv("test"),
        output:
            stage_submission_csv("{stage}"),
        params:
            edge=SUBMISSION["edge_area_threshold"],
            center=SUBMISSION["center_area_threshold"],
            combine=stage_submission_options,
        log:
            "logs/make_stage_submission/{stage}.log",
        benchmark:
            "logs/benchmarks/make_stage_submission/{stage}.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline submit --predictions {input.predictions} --cells {input.cells} --masks {input.masks} "
            "--index {input.index} --edge-area-threshold {params.edge} --center-area-threshold {params.center} "
            "{params.combine} --out {output} > {log} 2>&1"

    rule validate_submission:
        input:
            submission=SUBMISSION_CSV,
            images=image_dir("test"),
            table=label_table("test"),
        output:
            SUBMISSION_CHECK,
        log:
            "logs/validate_submission/validate_submission.log",
        benchmark:
            "logs/benchmarks/validate_submission/validate_submission.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline validate-submission {input.submission} --images {input.images} --table {input.table} "
            "--report {output} > {log} 2>&1"

    rule evaluate:
        input:
            oof=[oof_store(model) for model in MODELS],
            ensembles=[ensemble_store(name) for name in ENSEMBLES],
            submission=SUBMISSION_CSV,
            stage_submissions=[stage_submission_csv(name) for name in STAGE_SUBMISSIONS],
            masks=all_shards(masks_store, ["train"]),  # the truth covers the Kaggle train set
            test_masks=all_shards(masks_store, ["test"]),
            truth=TRUTH_DIR or [],
        output:
            json=METRICS_JSON,
            tsv=report(METRICS_TSV, caption="../report/metrics.rst", category="Metrics"),
        params:
            scored=evaluation_options,
            seed=config["seed"],
        log:
            "logs/evaluate/evaluate.log",
        benchmark:
            "logs/benchmarks/evaluate/evaluate.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline evaluate {params.scored} --submission {input.submission} --masks {input.masks} "
            "--test-masks {input.test_masks} --truth {input.truth} --seed {params.seed} "
            "--out-json {output.json} --out-tsv {output.tsv} > {log} 2>&1"
