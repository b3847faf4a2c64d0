from flaskshop.extensions import db, queue
from flaskshop.models import Order


@queue.task
def send_receipt(order_id: int) -> str:
    # Runs inside the app context (FlaskTask): db.session works as in a view.
    order = db.session.get(Order, order_id)
    assert order is not None  # committed together with this job
    order.status = "receipt sent"
    db.session.commit()
    return order.item
