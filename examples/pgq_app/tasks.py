"""The shop's tasks: an order goes through stock, payment and a receipt; newsletters go out
in parallel; reports run on a schedule."""

import logging
import os

from pgq import SoftTimeLimitExceeded

from . import services
from .app import app

logger = logging.getLogger(__name__)
SWEEP_EVERY = float(os.environ.get("SHOP_SWEEP_EVERY", "300"))  # seconds


@app.task(name="shop.reserve_stock")
def reserve_stock(order_id, items):
    return services.reserve(order_id, items)


@app.task(bind=True, name="shop.charge", max_retries=5)
def charge(self, amount_cents, order_id, card_token):
    try:
        return services.charge_card(order_id, amount_cents, card_token)
    except services.GatewayTimeout as exc:
        logger.warning("order %s: %s (retry %d)", order_id, exc, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=2**self.request.retries) from exc


@app.task(name="shop.send_receipt")
def send_receipt(charge_id, order_id, to):
    return services.send_mail(to, f"Order {order_id} is paid", f"Charge {charge_id}. Thanks!")


@app.task(name="shop.send_email", autoretry_for=(services.MailServerBusy,),
          retry_backoff=True, rate_limit="50/s")
def send_email(to, subject, body):
    return services.send_mail(to, subject, body)


@app.task(name="shop.newsletter_report")
def newsletter_report(message_ids, campaign):
    services.record("newsletters", campaign=campaign, sent=len(message_ids))
    return {"campaign": campaign, "sent": len(message_ids)}


@app.task(name="shop.daily_report", soft_time_limit=60)
def daily_report():
    try:
        total = sum(charge["amount"] for charge in services.records("charges"))
    except SoftTimeLimitExceeded:
        logger.error("daily report took too long")
        raise
    services.record("reports", total=total)
    return total


@app.task(name="shop.release_expired_carts")
def release_expired_carts():
    services.record("sweeps")
    return 0


app.add_periodic_task(SWEEP_EVERY, release_expired_carts.s(),
                      name="release-expired-carts")
