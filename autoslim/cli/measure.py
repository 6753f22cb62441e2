"""``autoslim measure``: perplexity (and throughput) of a model under the fixed protocol."""

from __future__ import annotations

import argparse
import time
from typing import Any

from autoslim.cli._common import (
    add_data_args,
    add_model_args,
    add_protocol_args,
    print_json,
    print_table,
    protocol_from,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "measure", help="measure a model's perplexity on the eval split"
    )
    add_model_args(parser)
    add_data_args(parser)
    add_protocol_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoslim import data, models
    from autoslim.measure.perplexity import perplexity

    protocol = protocol_from(args)
    corpus = data.load_corpus(text=args.text, dataset=args.dataset)
    loaded = models.load_model(args.model, trust_remote_code=args.trust_remote_code)
    ids = data.tokens(loaded.tokenizer, corpus, "eval")
    started = time.perf_counter()
    result = perplexity(loaded.model, ids, protocol)
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "model": args.model,
        "family": loaded.family,
        "parameters": models.parameter_count(loaded.model),
        **result.to_dict(),
        "corpus": corpus.name,
        "corpus_fingerprint": corpus.fingerprint,
        "eval_seconds": seconds,
        "tokens_per_second": result.windows * protocol.window / seconds,
    }
    if args.json:
        print_json(report)
    else:
        print_table(
            [
                ("model", f"{args.model} ({loaded.family}, {report['parameters']:,} parameters)"),
                ("perplexity", f"{result.perplexity:.3f}"),
                ("scored tokens", f"{result.scored_tokens:,} in {result.windows} windows"),
                ("protocol", result.protocol.describe()),
                ("corpus", f"{corpus.name} (eval split), fingerprint {corpus.fingerprint}"),
                ("throughput", f"{report['tokens_per_second']:,.0f} tokens/s ({seconds:.2f} s)"),
            ]
        )
    return 0
