"""`uvicorn signup.main:api`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from signup.db import User, create_tables, engine, get_session
from signup.tasks import queue, send_welcome


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    await create_tables()  # an example's shortcut: use migrations in a real service
    yield
    await queue.aclose()  # pgq's async pool of this event loop
    await engine.dispose()


api = FastAPI(lifespan=lifespan)
DbSession = Annotated[AsyncSession, Depends(get_session)]


class SignUp(BaseModel):
    email: str
    dry_run: bool = False


@api.post("/users", status_code=201)
async def sign_up(body: SignUp, session: DbSession) -> dict[str, object]:
    user = User(email=body.email)
    session.add(user)
    await session.flush()  # the user's id
    # In the session's transaction: the job exists if and only if the user row does.
    job = await send_welcome.aapply_async((user.id,), connection=session)
    if body.dry_run:
        await session.rollback()
        return {"user": None, "job": None}
    await session.commit()
    return {"user": user.id, "job": job.id}


@api.get("/users/{user_id}")
async def show_user(user_id: int, session: DbSession) -> dict[str, object]:
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(404)
    return {"user": user.id, "email": user.email, "welcomed": user.welcomed}


@api.get("/jobs/{job_id}")
async def show_job(job_id: str, wait: float = 0) -> dict[str, object]:
    """The job's state; with `?wait=S`, wait up to S seconds for it to finish (LISTEN, no
    polling, no thread blocked)."""
    result = queue.AsyncResult(job_id)
    if wait:
        value = await result.aget(timeout=wait, propagate=False)
        return {"job": job_id, "state": await result.astate(),
                "result": value if await result.asuccessful() else repr(value)}
    return {"job": job_id, "state": await result.astate()}
