"""Stand-ins for the shop's real services (stock, card gateway, mail server), so that the
example runs anywhere: each records what it did as one JSON line in a file under
$SHOP_OUTBOX. Identical in celery_app/ and pgq_app/: porting does not touch it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

PRICES = {"tea": 450, "mug": 1200, "cake": 300}  # cents


class GatewayTimeout(Exception):
    """The card gateway did not answer in time; trying again later usually works."""


class MailServerBusy(Exception):
    """The mail server refused the message for now (a 4xx reply)."""


def _outbox() -> Path:
    path = Path(os.environ.get("SHOP_OUTBOX", "/tmp/shop-outbox"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(kind: str, **fields: Any) -> None:
    line = json.dumps({"pid": os.getpid(), **fields}) + "\n"
    with open(_outbox() / f"{kind}.jsonl", "a") as file:  # one write: whole lines only
        file.write(line)


def records(kind: str) -> list[dict[str, Any]]:
    path = _outbox() / f"{kind}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def reserve(order_id: int, items: dict[str, int]) -> int:
    """Hold the items for the order; returns the order's total in cents."""
    total = sum(PRICES[sku] * quantity for sku, quantity in items.items())
    record("reservations", order_id=order_id, items=items, total=total)
    return total


def charge_card(order_id: int, amount_cents: int, card_token: str) -> str:
    """The sandbox gateway times out on the first attempt of every order, as sandboxes do."""
    first_attempt = not any(r["order_id"] == order_id for r in records("charge_attempts"))
    record("charge_attempts", order_id=order_id)
    if first_attempt:
        raise GatewayTimeout(f"the gateway timed out charging order {order_id}")
    charge_id = f"ch_{uuid.uuid4().hex[:12]}"
    record("charges", order_id=order_id, amount=amount_cents, charge_id=charge_id)
    return charge_id


def send_mail(to: str, subject: str, body: str) -> str:
    message_id = f"<{uuid.uuid4().hex}@shop.example>"
    record("mail", to=to, subject=subject, message_id=message_id)
    return message_id
