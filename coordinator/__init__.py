"""flota coordinator: discovery, registry, store, scheduler, reconcile loop and API."""
