"""Email: a subscriber to order outcomes (it records what it would send, as events)."""

from __future__ import annotations

from belvedere.examples.shop.app import app, emails
from belvedere.examples.shop.contracts import EmailSent, OrderCancelled, OrderConfirmed

emails_per_user = app.view("emails-per-user", value=int)


@app.reactor(OrderConfirmed)
async def confirmation(event: OrderConfirmed) -> None:
    subject = f"Your order {event.order_id} is on its way"
    await emails.publish(EmailSent(user_id=event.user_id, order_id=event.order_id, subject=subject))


@app.reactor(OrderCancelled)
async def apology(event: OrderCancelled) -> None:
    subject = f"Your order {event.order_id} was cancelled: {event.reason}"
    await emails.publish(EmailSent(user_id=event.user_id, order_id=event.order_id, subject=subject))


@app.projection(emails, view=emails_per_user)
def count(view, event: EmailSent) -> None:
    view[event.user_id] = view.get(event.user_id, 0) + 1
