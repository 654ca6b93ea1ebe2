# Figures for `snakemake --report report.html`: training curves, metrics by stage, segmentation overlays.


rule plot_training_curves:
    input:
        [model_file("{model}", fold, "metrics.csv") for fold in FOLDS],
    output:
        report(
            training_plot("{model}"),
            caption="../report/training.rst",
            category="Training curves",
            labels={"model": "{model}"},
        ),
    params:
        labels=" ".join(f"fold{fold}" for fold in FOLDS),
    log:
        "logs/plot_training_curves/{model}.log",
    benchmark:
        "logs/benchmarks/plot_training_curves/{model}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline plot-training --metrics {input} --labels {params.labels} --title {wildcards.model} "
        "--out {output} > {log} 2>&1"


rule plot_metrics:
    input:
        METRICS_TSV,
    output:
        report(METRICS_PLOT, caption="../report/metrics.rst", category="Metrics"),
    log:
        "logs/plot_metrics/plot_metrics.log",
    benchmark:
        "logs/benchmarks/plot_metrics/plot_metrics.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline plot-metrics --metrics {input} --out {output} > {log} 2>&1"


rule plot_segmentation:
    input:
        images=lambda wildcards: images_store(wildcards.dataset, min(IMAGE_SIZES), 0),
        masks=lambda wildcards: resized_masks_store(wildcards.dataset, min(IMAGE_SIZES), 0),
    output:
        report(
            segmentation_plot("{dataset}"),
            caption="../report/segmentation.rst",
            category="Segmentation",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/plot_segmentation/{dataset}.log",
    benchmark:
        "logs/benchmarks/plot_segmentation/{dataset}.tsv"
    conda:
        "../envs/pipeline.yaml"
    shell:
        "hpa-pipeline plot-segmentation --images {input.images} --masks {input.masks} --out {output} > {log} 2>&1"
