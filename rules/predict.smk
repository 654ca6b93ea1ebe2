# Predictions of every model: its held-out fold (joined into out-of-fold predictions) and the test set.


rule predict_valid:
    input:
        unpack(validation_inputs),
        checkpoint=model_file("{model}", "{fold}", "final.pt"),
    output:
        directory(model_file("{model}", "{fold}", "valid.zarr")),
    params:
        settings=model_settings_json,
        data=data_options,
    threads: MODEL_THREADS
    resources:
        gpu=1,
    log:
        "logs/predict_valid/{model}-fold{fold}.log",
    benchmark:
        "logs/benchmarks/predict_valid/{model}-fold{fold}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline predict --settings {params.settings:q} --checkpoint {input.checkpoint} "
        "--fold {wildcards.fold} {params.data} --threads {threads} "
        "--out {output} > {log} 2>&1"


rule concat_valid:
    input:
        parts=[model_file("{model}", fold, "valid.zarr") for fold in FOLDS],
        index=[index_csv(dataset) for dataset in TRAIN_DATASETS],
    output:
        directory(oof_store("{model}")),
    log:
        "logs/concat_valid/{model}.log",
    benchmark:
        "logs/benchmarks/concat_valid/{model}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline concat --parts {input.parts} --index {input.index} --model {wildcards.model} "
        "--out {output} > {log} 2>&1"


rule predict_test:
    input:
        unpack(test_inputs),
        checkpoint=model_file("{model}", "{fold}", "final.pt"),
    output:
        directory(model_file("{model}", "{fold}", "test.zarr")),
    params:
        settings=model_settings_json,
        data=data_options,
    threads: MODEL_THREADS
    resources:
        gpu=1,
    log:
        "logs/predict_test/{model}-fold{fold}.log",
    benchmark:
        "logs/benchmarks/predict_test/{model}-fold{fold}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline predict --settings {params.settings:q} --checkpoint {input.checkpoint} "
        "{params.data} --threads {threads} --out {output} > {log} 2>&1"
