"""The async SQLAlchemy engine (psycopg 3 driver) on the database pgq uses."""

import os
from collections.abc import AsyncIterator

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import URL, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def database_url(dsn: str) -> str:
    """A SQLAlchemy URL (psycopg 3 driver, which pgq's async calls need) for a libpq DSN."""
    parts = conninfo_to_dict(dsn)
    host = str(parts.get("host") or "")
    url = URL.create(
        "postgresql+psycopg", username=parts.get("user"), password=parts.get("password"),
        host=None if host.startswith("/") else host or None,
        port=int(parts["port"]) if parts.get("port") else None,
        database=parts.get("dbname"),
        query={"host": host} if host.startswith("/") else {},  # a Unix socket directory
    )
    return url.render_as_string(hide_password=False)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "signup_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    welcomed: Mapped[bool] = mapped_column(default=False)


engine = create_async_engine(os.environ.get("DATABASE_URL")
                             or database_url(os.environ["PGQ_DSN"]))
Session = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with Session() as session:
        yield session


async def create_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
