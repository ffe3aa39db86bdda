-- Contract terms and rented specs of a VPS, and operators' exchange rates (issue 20).
-- Money is a fixed-scale integer: cost_e4 counts 1/10,000 of the currency unit, rate_e8
-- 1/100,000,000 (exact, and compared as integers on both backends). Dates are ISO text
-- (YYYY-MM-DD), which sorts and compares as the dates do.
ALTER TABLE vps ADD COLUMN cost_e4 INTEGER;
ALTER TABLE vps ADD COLUMN currency TEXT;
ALTER TABLE vps ADD COLUMN billing_cycle TEXT;
ALTER TABLE vps ADD COLUMN purchased_on TEXT;
ALTER TABLE vps ADD COLUMN expires_on TEXT;
ALTER TABLE vps ADD COLUMN auto_renew INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vps ADD COLUMN cpu_cores INTEGER;
ALTER TABLE vps ADD COLUMN ram_mb INTEGER;
ALTER TABLE vps ADD COLUMN disk_gb INTEGER;
ALTER TABLE vps ADD COLUMN traffic_gb INTEGER;
ALTER TABLE vps ADD COLUMN ssh_port INTEGER;
ALTER TABLE vps ADD COLUMN data_center TEXT;
CREATE INDEX vps_expires_on ON vps (expires_on);
CREATE INDEX vps_currency ON vps (currency);

-- 1 from_currency = rate_e8 / 10^8 to_currency. Only the direction an operator entered is
-- used: an inverse would not be exact.
CREATE TABLE exchange_rates (
    from_currency  TEXT NOT NULL,
    to_currency    TEXT NOT NULL,
    rate_e8        INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (from_currency, to_currency)
);
