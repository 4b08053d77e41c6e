"""`textloop rank`: which unlabelled images to label next."""

from __future__ import annotations

import typer
from rich.console import Console

from pipeline.cli.common import emit, fail, plain, progress, state, titled
from pipeline.rank import STRATEGY_HELP, RankError, RankOptions, RankResult, rank_images

RANK = RankOptions()   # the option defaults are the library's


def register(app: typer.Typer) -> None:
    app.command("rank")(rank_cmd)


def rank_cmd(
    ctx: typer.Context,
    strategy: str = typer.Option(RANK.strategy, help=STRATEGY_HELP),
    top: int = typer.Option(RANK.top, min=1, help="Size of the batch to label next."),
    detector: str = typer.Option("current", help="Model being improved: current, ppocr, or a bundle.zip."),
    committee: str = typer.Option(str(RANK.committee), help="Second detector for the committee score ('none' to skip)."),
    tta: bool = typer.Option(RANK.tta, help="Also score disagreement under flip/rescale (2 extra passes per image)."),
    diversity: bool = typer.Option(RANK.diversity, help="Never two near-duplicates in one batch."),
    kcenter: bool = typer.Option(RANK.kcenter, help="Spread the batch over the pool (k-center over image embeddings)."),
    min_score: float = typer.Option(RANK.min_score, min=0.0, max=1.0, help="Keep boxes down to this score (weak boxes carry the uncertainty)."),
) -> None:
    """Score unlabelled images by every strategy and pick the next batch (reports/ranking.parquet, read by push)."""
    st = state(ctx)
    ws = st.read_ws()
    try:
        options = RankOptions(strategy=strategy, top=top, committee=None if committee.lower() == "none" else committee,
                              tta=tta, diversity=diversity, kcenter=kcenter, min_score=min_score)
        with progress(st, "rank") as update:
            result = rank_images(ws, options, detector, progress=update)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)
    except RankError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; the ranking was not written (predictions of finished images are kept in the catalog: "
             "the same command again reuses them)", 130)
    emit(st, result.as_dict(), lambda c: _render(c, result))


def _render(c: Console, result: RankResult) -> None:
    """The batch with each image's score and why, skipped images, and what to run next."""
    batch, strategy, data = result.batch, result.run.strategy, result.as_dict()
    t = titled(f"next batch by {strategy} ({len(batch)} of {len(result.frame)} unlabelled images)")
    for col in ("#", "image", "score", "boxes", "why"):
        t.add_column(col)
    for _, r in batch.iterrows():
        t.add_row(str(int(r["batch_rank"])), f"{r['original_name']} ({r['image_id'][:8]})", f"{r[f'score_{strategy}']:.3f}",
                  str(r["n_boxes"]),
                  r["reason"])
    c.print(t)
    for e in data["errors"]:
        c.print(f"[yellow]skipped[/] {plain(e['image_id'][:8])}: {plain(e['error'])}")
    c.print(f"ranking table: {data['table']} (+ .csv)"
            + (f"; next: `textloop push --strategy ranked --top {result.run.top}`" if len(result.batch)
               else "; nothing to push: every image is labelled, excluded or none was harvested"))
