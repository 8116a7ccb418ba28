-- Settles operation records whose trigger work was sent. KEYS: the records. No ARGV.
-- Each whole record (a hash) becomes its marker, with the time to live it had left.
-- Returns how many were settled.
--!include lib_settle

local settled = 0
for _, record in ipairs(KEYS) do settled = settled + settle(record) end
return settled
