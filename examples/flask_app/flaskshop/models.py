from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from flaskshop.extensions import db


class Order(db.Model):  # type: ignore[name-defined]
    __tablename__ = "flaskshop_order"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20), default="new")
