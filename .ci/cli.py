"""Runs the `cohort` CLI for the CI client scripts."""

import subprocess


def cohort(binary, address, *args):
    """Its standard output; a failure ends the script with the CLI's error."""
    out = subprocess.run([binary, "--coordinator", address, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cohort {' '.join(args)} failed: {out.stderr}")
    return out.stdout
