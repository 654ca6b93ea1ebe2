# The submission: averaged test predictions with area scaling, its validation, and (with truth) the metrics.


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
