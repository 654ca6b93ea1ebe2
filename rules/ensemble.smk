# Ensembles: the equal-weight average of their members' out-of-fold predictions (the next stage's pseudo labels).


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
