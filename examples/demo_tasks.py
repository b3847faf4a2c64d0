"""The demo app: a few tasks that show results, retries, failures and progress."""

import time

from pgq import App

app = App("demo")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True, max_retries=2, default_retry_delay=0.2)
def flaky(self, attempts_needed: int) -> str:
    if self.request.retries < attempts_needed:
        raise self.retry(exc=ConnectionError("the network blinked"))
    return f"succeeded after {self.request.retries} retries"


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True)
def crunch(self, n: int) -> int:
    total = 0
    for i in range(n):
        total += i
        if i % max(1, n // 4) == 0:
            self.update_state(state="PROGRESS", meta={"done": i, "total": n})
            time.sleep(0.05)
    return total
