"""flota coordinator: discovery, fleet, store, scheduler, outcomes, reconcile loop, service and API."""
