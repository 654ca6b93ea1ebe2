# Folds per training dataset, then one training job per model and fold (GPU when there is one).


rule make_folds:
    input:
        index=lambda wildcards: index_csv(wildcards.dataset),
        duplicates=DUPLICATE_GROUPS if DUPLICATES else [],
        # a duplicate group that spans datasets keeps the fold an earlier dataset gave it
        earlier=lambda wildcards: [folds_csv(dataset) for dataset in earlier_train_datasets(wildcards.dataset)],
    output:
        folds_csv("{dataset}"),
    params:
        n_folds=N_FOLDS,
        seed=config["seed"],
        duplicates=lambda wildcards, input: f"--duplicates {input.duplicates}" if DUPLICATES else "",
        earlier=lambda wildcards: " ".join(
            f"{dataset}={folds_csv(dataset)}" for dataset in earlier_train_datasets(wildcards.dataset)
        ),
        drop=" --drop-test-duplicates" if DUPLICATES.get("drop_test_duplicates") else "",
        task=TASK,
    log:
        "logs/make_folds/{dataset}.log",
    benchmark:
        "logs/benchmarks/make_folds/{dataset}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline folds --index {input.index} --n-folds {params.n_folds} --seed {params.seed} "
        "{params.duplicates} --earlier-folds {params.earlier}{params.drop} --task {params.task} --out {output} "
        "> {log} 2>&1"


rule train_model:
    input:
        unpack(training_inputs),
    output:
        model=model_file("{model}", "{fold}", "final.pt"),
        metrics=model_file("{model}", "{fold}", "metrics.csv"),
        run=model_file("{model}", "{fold}", "run.yaml"),
    params:
        settings=model_settings_json,
        data=data_options,
        checkpoint_dir=checkpoint_dir("{model}", "{fold}"),
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
    threads: MODEL_THREADS
    resources:
        gpu=1,
    log:
        "logs/train_model/{model}-fold{fold}.log",
    benchmark:
        "logs/benchmarks/train_model/{model}-fold{fold}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline train --settings {params.settings:q} --fold {wildcards.fold} {params.data} "
        "--checkpoint-dir {params.checkpoint_dir} --out-dir {params.out_dir} "
        "--threads {threads} > {log} 2>&1"
