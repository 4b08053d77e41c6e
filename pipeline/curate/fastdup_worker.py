"""fastdup worker: runs inside the fastdup venv (`.venv-fastdup`), never imported by textloop.

fastdup pins Pillow==10.3.0 and numpy<2, which cannot live in the main venv, so
`pipeline.curate.duplicates` starts this script with the fastdup interpreter. It only uses
fastdup, numpy and pandas, reads a list of absolute image paths and writes plain CSV/NPY
files that the parent reads back by file name (never by row position):

  files.csv        filename, is_valid, error_code       (every input file, broken ones too)
  similarity.csv   filename_a, filename_b, similarity   (pairs above --threshold)
  outliers.csv     filename, nearest, similarity        (fastdup's bottom percentile)
  components.csv   filename, component_id               (connected components at --cc-threshold)
  embeddings.npy + embeddings.csv (filename per row)
  worker_stats.json                peak RSS of this worker

Usage: python fastdup_worker.py --files LIST --work-dir DIR --out DIR [--threshold 0.9]
       [--cc-threshold 0.96] [--outlier-percentile 0.05] [--num-threads 2]
Telemetry: SENTRY_OPT_OUT=1 and FASTDUP_PRODUCTION=1 (no version check) are forced before fastdup is imported. fastdup 2.54 has no
explorer launch in `run()`; nothing here starts a server or opens a browser.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

# before `import fastdup`: its Sentry init checks SENTRY_OPT_OUT at import, and its import
# asks pypi.org for the latest version unless FASTDUP_PRODUCTION is set
os.environ["SENTRY_OPT_OUT"] = "1"
os.environ["FASTDUP_PRODUCTION"] = "1"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--cc-threshold", type=float, default=0.96)
    ap.add_argument("--outlier-percentile", type=float, default=0.05)
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    import numpy as np
    import pandas as pd

    quiet = contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        import fastdup

        fd = fastdup.create(work_dir=args.work_dir, input_dir=args.files)
        fd.run(overwrite=True, threshold=args.threshold, cc_threshold=args.cc_threshold,
               outlier_percentile=args.outlier_percentile, num_threads=args.num_threads,
               verbose=args.verbose, print_summary=False)
        annot = fd.annotations(valid_only=False)
        sim = fd.similarity(data=False)
        out = fd.outliers(data=True)
        cc, _ = fd.connected_components(data=True)
        files, emb = fd.embeddings()

    os.makedirs(args.out, exist_ok=True)
    by_index = dict(zip(annot["fd_index"].astype(int), annot["filename"].astype(str)))
    annot[["filename", "is_valid", "error_code"]].to_csv(os.path.join(args.out, "files.csv"), index=False)

    rows = []
    if sim is not None and len(sim):
        for a, b, d in zip(sim["from"].astype(int), sim["to"].astype(int), sim["distance"].astype(float)):
            if a < b:  # fastdup lists each pair twice
                rows.append((by_index.get(a), by_index.get(b), d))
    pd.DataFrame(rows, columns=["filename_a", "filename_b", "similarity"]).to_csv(
        os.path.join(args.out, "similarity.csv"), index=False)

    if out is not None and len(out) and "filename_outlier" in out.columns:
        pd.DataFrame({"filename": out["filename_outlier"], "nearest": out["filename_nearest"],
                      "similarity": out["distance"]}).to_csv(os.path.join(args.out, "outliers.csv"), index=False)
    else:
        pd.DataFrame(columns=["filename", "nearest", "similarity"]).to_csv(os.path.join(args.out, "outliers.csv"), index=False)

    if cc is not None and len(cc) and "filename" in cc.columns:
        cc[["filename", "component_id"]].to_csv(os.path.join(args.out, "components.csv"), index=False)
    else:
        pd.DataFrame(columns=["filename", "component_id"]).to_csv(os.path.join(args.out, "components.csv"), index=False)

    peak_kb = None
    try:  # this process's own peak RSS (VmHWM; not inherited across exec, unlike ru_maxrss)
        with open("/proc/self/status") as fh:
            peak_kb = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), None)
    except OSError:
        pass
    with open(os.path.join(args.out, "worker_stats.json"), "w") as fh:
        fh.write('{"peak_rss_kb": %s}' % ("null" if peak_kb is None else peak_kb))
    np.save(os.path.join(args.out, "embeddings.npy"), np.asarray(emb, dtype=np.float32))
    pd.DataFrame({"filename": [str(f) for f in files]}).to_csv(os.path.join(args.out, "embeddings.csv"), index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
