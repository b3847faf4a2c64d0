"""`pgq worker -A signup.tasks`. The task is `async def`: the worker runs it on its child's
event loop (one per child, kept for the next jobs, so the engine's connections stay usable)."""

import asyncio

from pgq import App, Task
from signup.db import Session, User

queue = App("signup")


@queue.task(bind=True, max_retries=5, autoretry_for=(ConnectionError,), retry_backoff=True)
async def send_welcome(self: Task, user_id: int) -> str:
    async with Session() as session:
        user = await session.get(User, user_id)
        assert user is not None  # committed together with this job
        await asyncio.sleep(0.01)  # stands for the mail server's round trip
        user.welcomed = True
        await session.commit()
        return f"welcomed {user.email} (job {self.request.id})"
