"""The search: study files (``config``), the space and its sampling (``space``), the study
loop (``study``) and its isolated trial worker (``worker``), the cost model (``costs``), the
storages (``storage``) and their integrity checks (``integrity``), the one reader of stored
trials (``trials``) and the budgets (``budgets``). Nothing is imported here."""
