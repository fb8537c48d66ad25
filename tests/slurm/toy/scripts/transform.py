"""Toy `transform` job: square each number; note which Slurm job ran it; fail on request."""

import json
import os
import socket
import sys

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive

with open(snakemake.output.where, "w") as handle:
    json.dump(
        {
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
        handle,
    )

if snakemake.params.fail:
    print(f"transform: failing on purpose for sample {snakemake.wildcards.sample}", file=sys.stderr)
    sys.exit(3)

with open(snakemake.input[0]) as source, open(snakemake.output.squares, "w") as target:
    for line in source:
        sample, value = line.split()
        target.write(f"{sample} {int(value) ** 2}\n")
