-- Which carrier sold a number and its id there, so that releasing the number
-- releases it at the carrier too. Numbers added by operators (ringer-admin
-- number add) have neither: ringer did not buy them and never releases them
-- at a carrier.

ALTER TABLE phone_numbers
    ADD COLUMN carrier     text CHECK (carrier IN ('simulated', 'twilio')),
    ADD COLUMN carrier_sid text,
    ADD CONSTRAINT phone_numbers_carrier_sid_has_carrier CHECK (carrier_sid IS NULL OR carrier IS NOT NULL);
