-- Row-level security of the production database (not of dummy production: the staging database's
-- replica has the same tables and constraints, and is reached by the pipeline's own roles only).
--
-- Every production table shows and accepts only the rows of the tenant that the connection named
-- in `app.client_id` (clientflow.db.set_tenant): the promoter sets it to the batch's client at
-- the start of each promotion, so a change set carrying another client's key (a forged or buggy
-- row) fails its WITH CHECK and rolls the promotion back, and no other client's row is even
-- visible to it. A connection that names no tenant sees no row. FORCE applies the policies to
-- the tables' owner too; superusers (the bootstrap, an operator's psql) bypass them, as always.
-- Foreign-key checks bypass row-level security (PostgreSQL's rule), so keys are still checked.
-- The caller sets search_path to the target schema (practice) before running this file.

do $$
declare
    t text;
begin
    foreach t in array array['providers', 'patients', 'appointments', 'procedures', 'promotions'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('drop policy if exists tenant_isolation on %I', t);
        execute format('create policy tenant_isolation on %I '
                       'using (client_id = current_setting(''app.client_id'', true)) '
                       'with check (client_id = current_setting(''app.client_id'', true))', t);
    end loop;
end
$$;
