from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from orders.models import Order
from orders.tasks import confirm_order


class PaymentDeclined(Exception):
    pass


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    try:
        with transaction.atomic():
            order = Order.objects.create(item=request.POST["item"])
            # Written through Django's own connection, inside this transaction: the job
            # exists if and only if the order does. No transaction.on_commit() needed.
            job = confirm_order.apply_async((order.id,), connection=connection)
            if request.POST.get("card") == "declined":
                raise PaymentDeclined(order.item)
    except PaymentDeclined:
        return JsonResponse({"error": "payment declined"}, status=402)
    return JsonResponse({"order": order.id, "job": job.id}, status=201)


def show_order(request: HttpRequest, order_id: int) -> JsonResponse:
    order = Order.objects.get(pk=order_id)
    return JsonResponse({"order": order.id, "item": order.item, "status": order.status})
