"""A FastAPI sign-up service: async endpoints enqueue with `await task.aapply_async(...,
connection=session)` inside their AsyncSession's transaction, and an `async def` task sends
the welcome mail in the worker."""
