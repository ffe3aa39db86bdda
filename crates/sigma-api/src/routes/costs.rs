//! Operators' exchange rates and the monthly cost summary of the fleet (issue 20).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sigma_types::Normalize;
use sigma_types::costs::{
    self, CostQuery, CostSummary, ExchangeRate, ExchangeRateSet, currency_pair,
};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiPath, ApiQuery, Operator, Reader};

/// Every exchange rate an operator entered.
#[utoipa::path(get, path = "/api/exchange-rates", tag = "costs",
    responses((status = 200, body = Vec<ExchangeRate>)), security(("bearer" = [])))]
pub async fn list_rates(
    State(s): State<AppState>,
    Reader(_): Reader,
) -> ApiResult<Json<Vec<ExchangeRate>>> {
    Ok(Json(s.store.list_exchange_rates().await?))
}

/// Sets the rate of 1 `from` in `to` (creates or replaces it). Only this direction is used:
/// the inverse is not derived (it would not be exact).
#[utoipa::path(put, path = "/api/exchange-rates/{from}/{to}", tag = "costs",
    params(("from" = String, Path, description = "ISO 4217"), ("to" = String, Path, description = "ISO 4217")),
    request_body = ExchangeRateSet,
    responses((status = 200, body = ExchangeRate),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_rate(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath((from, to)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<ExchangeRateSet>,
) -> ApiResult<Json<ExchangeRate>> {
    let (from, to) = currency_pair(&from, &to)?;
    let body = body.normalize()?;
    Ok(Json(
        s.store
            .set_exchange_rate(&p.actor(), &from, &to, body.rate)
            .await?,
    ))
}

/// Removes the rate of 1 `from` in `to`.
#[utoipa::path(delete, path = "/api/exchange-rates/{from}/{to}", tag = "costs",
    params(("from" = String, Path, description = "ISO 4217"), ("to" = String, Path, description = "ISO 4217")),
    responses((status = 204), (status = 404, body = sigma_types::ErrorBody),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_rate(
    State(s): State<AppState>,
    Operator(p): Operator,
    ApiPath((from, to)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let (from, to) = currency_pair(&from, &to)?;
    s.store.delete_exchange_rate(&p.actor(), &from, &to).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Monthly cost of the VPS being paid for (provisioning, active, retiring) in one reporting
/// currency, grouped; normalised from billing cycles, summed exactly, rounded once to 4
/// decimals (half to even). A priced VPS without a rate from its currency, or without a
/// normalisable cycle, is listed in `excluded`, never estimated.
#[utoipa::path(get, path = "/api/costs/summary", tag = "costs", params(CostQuery),
    responses((status = 200, body = CostSummary),
    (status = 422, description = "an invalid path, query or body value (named)", body = sigma_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn summary(
    State(s): State<AppState>,
    Reader(_): Reader,
    ApiQuery(q): ApiQuery<CostQuery>,
) -> ApiResult<Json<CostSummary>> {
    let currency = sigma_types::money::currency(&q.currency)
        .map_err(|e| crate::error::ApiError::field("currency", e))?;
    let rates: BTreeMap<(String, String), sigma_types::Rate> = s
        .store
        .list_exchange_rates()
        .await?
        .into_iter()
        .map(|r| ((r.from, r.to), r.rate))
        .collect();
    let (rows, without) = s.store.cost_rows().await?;
    Ok(Json(costs::summarize(
        &rows, &rates, &currency, q.group_by, without,
    )))
}
