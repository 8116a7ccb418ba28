-- KEYS of a script that changes a scope: named for lib_mutation; KEYS[12] onwards are
-- records to settle, which ride along so that settling costs no round trip of its own.
-- The last three ARGV of every such script are the change log's: the operation's event id
-- ('' without an operation id), the entries the log keeps and their age in ms ('' and '':
-- no log; KEYS[11] is then the log's gap counter).
local scope_hash, groups, trigger_version, op_record = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local key_index, versions, due_index, due_scopes = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local pending, pending_at, change_log = KEYS[9], KEYS[10], KEYS[11]
local log_event, log_max, log_age = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local last_arg = #ARGV - 3
