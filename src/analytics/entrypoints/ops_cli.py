"""``analytics dlq list|show|replay|purge``: thin CLI over the dead-letter use cases.

Exit codes: 0 done, 1 not found or Redis unreachable, 2 bad arguments. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from analytics.application.dead_letters import (
    Selection,
    find_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    replay_selection,
)
from analytics.domain.errors import AdapterError, BadQuery, NotFound
from analytics.domain.ports import DeadLetters
from analytics.settings import Settings


def build_dead_letters(settings: Settings) -> DeadLetters:
    from analytics.adapters.dramatiq_queue import build_broker  # noqa: PLC0415
    from analytics.bootstrap import build_dead_letters as build  # noqa: PLC0415
    from analytics.bootstrap import failure_log  # noqa: PLC0415

    if settings.broker == "stub":
        raise BadQuery("broker", "the stub broker keeps no dead letters between processes")
    broker = build_broker(settings)
    return build(broker, failure_log(settings, broker))


def run_dlq(args: argparse.Namespace, settings: Settings, dlq: DeadLetters | None = None) -> int:
    import redis  # noqa: PLC0415

    name = f"analytics dlq {args.dlq_command}"
    try:
        dlq = dlq or build_dead_letters(settings)
        return _run(args, dlq)
    except NotFound as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except BadQuery as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `dlq list | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (AdapterError, redis.RedisError, OSError) as exc:
        broker = "RabbitMQ" if settings.broker == "rabbitmq" else "the broker's Redis"
        print(f"{name}: cannot reach {broker}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - e.g. pika's AMQP errors: one line, no traceback
        if type(exc).__module__.startswith("pika"):
            print(f"{name}: cannot reach RabbitMQ: {exc!r}", file=sys.stderr)
            return 1
        raise


def _run(args: argparse.Namespace, dlq: DeadLetters) -> int:
    cmd = args.dlq_command
    if cmd == "list":
        listing = list_dead_letters(dlq=dlq, queue=args.queue, actor=args.actor)
        if args.ids:
            wanted = {find_dead_letter(i, dlq=dlq).letter_id for i in args.ids}
            listing.letters[:] = [d for d in listing.letters if d.letter_id in wanted]
        if args.json:
            print(json.dumps({
                "count": len(listing.letters),
                "groups": [
                    {"queue": q, "actor": a, "error_type": e, "count": n}
                    for q, a, e, n in listing.groups
                ],
                "items": [d.summary() for d in listing.letters],
            }, indent=2))  # fmt: skip
            return 0
        if not listing.letters:
            print("no dead letters")
            return 0
        print(f"{len(listing.letters)} dead letter(s)")
        for q, a, e, n in listing.groups:
            print(f"  {n:>6} x {q}/{a}: {e}")
        print()
        print(f"{'ID':36}  {'QUEUE':13}  {'ACTOR':20}  {'TRIES':>5}  {'FAILED AT (UTC)':19}  ERROR")
        for d in listing.letters:
            kind = "permanent " if d.permanent else ""
            print(
                f"{d.letter_id:36}  {d.queue:13}  {d.actor:20}  {d.attempts:>5}  "
                f"{d.failed_at:%Y-%m-%d %H:%M:%S}  {kind}{d.error_type}: {d.error[:80]}"
            )
        return 0
    if cmd == "show":
        if len(args.ids) != 1:
            raise BadQuery("id", "show needs exactly one --id")
        letter = find_dead_letter(args.ids[0], dlq=dlq)
        if args.json:
            print(json.dumps(letter.detail(), indent=2))
            return 0
        for key, value in letter.detail().items():
            if key != "traceback":
                print(f"{key:16} {value}")
        print("traceback:")
        print(letter.traceback.rstrip() or "  (none recorded)")
        return 0
    selection = Selection(
        ids=tuple(args.ids), queue=args.queue, actor=args.actor, all=bool(args.all)
    )
    skipped: list[str] = []
    if cmd == "replay":
        replay = replay_selection(selection, dlq=dlq)
        done, skipped = replay.replayed, replay.skipped
        verb = "replayed"
    else:
        done = purge_dead_letters(selection, dlq=dlq)
        verb = "purged"
    if args.json:
        print(json.dumps({verb: done, "skipped": skipped} if skipped else {verb: done}))
    else:
        print(f"{verb} {len(done)} message(s)")
        for i in done:
            print(f"  {i}")
    if skipped:
        print(f"analytics dlq: {len(skipped)} dead letter(s) not replayed: their envelope does not"
              " decode, so there is nothing to run; inspect with `dlq show --id`, remove with"
              f" `dlq purge --id`: {', '.join(skipped)}", file=sys.stderr)  # fmt: skip
        return 1
    return 0
