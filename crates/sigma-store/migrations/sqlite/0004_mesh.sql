-- Mesh registry: a VPS can be kept out of the mesh, and the reconciler's last result per VPS is
-- stored so that every replica shows it. mesh_status is 'pending' until the reconciler has acted
-- on the latest change, then 'synced', 'error' (mesh_message says why) or 'none' (not meshed;
-- mesh_message says why). These columns never touch updated_at, so writing them does not wake
-- the change poll of other replicas.
ALTER TABLE vps ADD COLUMN mesh_opt_out INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vps ADD COLUMN mesh_status TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE vps ADD COLUMN mesh_message TEXT;
ALTER TABLE vps ADD COLUMN mesh_attempt_at INTEGER;
ALTER TABLE vps ADD COLUMN mesh_entry TEXT;
