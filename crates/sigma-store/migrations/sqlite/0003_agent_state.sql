-- What each agent last reported about what it manages (JSON).
ALTER TABLE vps ADD COLUMN agent_state TEXT;
