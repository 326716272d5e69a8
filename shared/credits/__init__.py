"""Pay-per-action credits: the ledger, the catalog, payments and their adapters (the Lambda layer)."""
