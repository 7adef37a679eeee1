"""Signals other apps hear from uploads."""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside the transaction that moves an upload to COMPLETED, FAILED or CANCELLED, with the
# row as committed (`upload=`). A receiver that must act only once the move is durable registers
# `transaction.on_commit`; one that raises rolls the move back, so receivers must not fail.
upload_finished = Signal()
