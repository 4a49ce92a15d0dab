"""Strategy plugins: the API (base.Strategy) and the built-ins SmaCross and ZScoreReversion."""
