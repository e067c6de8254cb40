-- Rows still 'sending' by age: orderflow_notifications_unknown counts the old ones at every scrape
-- (services/notify/unknown.py). Partial, so it holds only the sends in progress and those whose outcome is unknown.
CREATE INDEX notification_sending_age ON notification (updated_at) WHERE status = 'sending';
