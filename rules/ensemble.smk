# Ensembles: their members' out-of-fold predictions combined by ensemble.method (the next stage's pseudo
# labels), and for method weights the members' weights, fitted on out-of-fold predictions (docs/ensembles.md).

if ENSEMBLE_METHOD == "mean":

    rule average_ensemble:
        input:
            lambda wildcards: [oof_store(member) for member in ENSEMBLES[wildcards.ensemble]],
        output:
            directory(ensemble_store("{ensemble}")),
        log:
            "logs/average_ensemble/{ensemble}.log",
        benchmark:
            "logs/benchmarks/average_ensemble/{ensemble}.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline average --members {input} --name {wildcards.ensemble} --out {output} > {log} 2>&1"

else:

    rule average_ensemble:
        input:
            members=lambda wildcards: [oof_store(member) for member in ENSEMBLES[wildcards.ensemble]],
            weights=lambda wildcards: ensemble_weights(wildcards.ensemble) if ENSEMBLE_METHOD == "weights" else [],
        output:
            directory(ensemble_store("{ensemble}")),
        params:
            combine=lambda wildcards: combine_options(ensemble_weights(wildcards.ensemble)),
        log:
            "logs/average_ensemble/{ensemble}.log",
        benchmark:
            "logs/benchmarks/average_ensemble/{ensemble}.tsv"
        conda:
            "../envs/pipeline.yaml"
        shell:
            "hpa-pipeline average --members {input.members} --name {wildcards.ensemble} {params.combine} "
            "--out {output} > {log} 2>&1"


rule fit_weights:
    input:
        members=lambda wildcards: [oof_store(member) for member in ENSEMBLES[wildcards.ensemble]],
        index=[index_csv(dataset) for dataset in TRAIN_DATASETS],
        folds=[folds_csv(dataset) for dataset in TRAIN_DATASETS],
    output:
        report(
            ensemble_weights("{ensemble}"),
            caption="../report/weights.rst",
            category="Ensemble weights",
            labels={"combination": "{ensemble}"},
        ),
    params:
        seed=config["seed"],
    log:
        "logs/fit_weights/{ensemble}.log",
    benchmark:
        "logs/benchmarks/fit_weights/{ensemble}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline fit-weights --members {input.members} --index {input.index} --folds {input.folds} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule fit_submission_weights:
    input:
        members=member_oofs(),
        index=[index_csv(dataset) for dataset in TRAIN_DATASETS],
        folds=[folds_csv(dataset) for dataset in TRAIN_DATASETS],
    output:
        report(
            SUBMISSION_WEIGHTS,
            caption="../report/weights.rst",
            category="Ensemble weights",
            labels={"combination": "submission"},
        ),
    params:
        seed=config["seed"],
    log:
        "logs/fit_submission_weights/fit_submission_weights.log",
    benchmark:
        "logs/benchmarks/fit_submission_weights/fit_submission_weights.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline fit-weights --members {input.members} --index {input.index} --folds {input.folds} "
        "--seed {params.seed} --out {output} > {log} 2>&1"
