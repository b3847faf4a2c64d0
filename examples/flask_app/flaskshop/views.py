from flask import Blueprint, abort, request

from flaskshop.extensions import db, queue
from flaskshop.models import Order
from flaskshop.tasks import send_receipt

bp = Blueprint("orders", __name__)


@bp.post("/orders")
def create_order() -> tuple[dict[str, object], int]:
    order = Order(item=request.json["item"])
    db.session.add(order)
    db.session.flush()  # the order's id
    # The job row goes into the session's transaction: committed with the order, or not at
    # all.
    job = send_receipt.apply_async((order.id,), connection=db.session)
    if request.json.get("card") == "declined":
        db.session.rollback()
        return {"error": "payment declined"}, 402
    db.session.commit()
    return {"order": order.id, "job": job.id}, 201


@bp.get("/orders/<int:order_id>")
def show_order(order_id: int) -> dict[str, object]:
    order = db.session.get(Order, order_id) or abort(404)
    return {"order": order.id, "item": order.item, "status": order.status}


@bp.get("/jobs/<job_id>")
def show_job(job_id: str) -> dict[str, object]:
    result = queue.AsyncResult(job_id)
    return {"job": job_id, "state": result.state,
            "result": result.result if result.successful() else None}
