"""What a study gives its user: the report (``report``), the choice of one trial (``pick``,
``weights``, ``retime``) and its export with a model card (``export``, ``card``). Nothing is
imported here."""
