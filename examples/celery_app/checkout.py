"""What the web app calls: each function enqueues work and returns at once."""

from celery import chain, chord

from .tasks import charge, newsletter_report, reserve_stock, send_email, send_receipt


def place_order(order_id, items, card_token, email):
    """Reserve the stock, charge the card, mail the receipt: one step after the other.
    Returns the receipt step's result; `.parent` is the charge, `.parent.parent` the
    reservation."""
    return chain(
        reserve_stock.s(order_id, items),
        charge.s(order_id, card_token),
        send_receipt.s(order_id, email),
    ).apply_async()


def send_newsletter(campaign, subscribers):
    """Mail every subscriber in parallel, at low priority; one report once all are sent."""
    header = [send_email.s(to, f"News: {campaign}", "Spring teas are in.").set(priority=9)
              for to in subscribers]
    return chord(header)(newsletter_report.s(campaign))
