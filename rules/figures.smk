# Figures stage: finetuning results -> the paper's figures (config figures: which are on).


if config["figures"]["fig4"]:

    # Seconds of CPU: run beside Snakemake rather than queued on a cluster.
    localrules:
        fig4,

    rule fig4:
        input:
            fig4_targets(),
        output:
            png=report(
                FIGURES / "fig4.png",
                caption="../workflow/report/fig4.rst",
                category="Figures",
                labels={"figure": "Fig. 4", "format": "png"},
            ),
            csv=FIGURES / "fig4.csv",
        log:
            LOGS / "figures" / "fig4.log",
        conda:
            "../envs/figures.yaml"
        resources:
            runtime=10,
            mem_mb=2000,
        params:
            rows=fig4_row_options(),
        shell:
            "python -m msgfm fig4 --png {output.png:q} --csv {output.csv:q} {params.rows:q}"
            " {input:q} > {log:q} 2>&1"
