"""Handlers for the user-profile examples, loaded by a worker with ``-I profile_handlers``.

The first two blocks are the original engine's Python samples, unchanged; the
last one is a handler that writes state while it handles a change.
"""

from state_tasks import iii


# -- Sample: react to changes of users/profile -------------------------------------

def on_user_updated(event):
    print('State changed:', event['event_type'], event['key'])
    print('Previous:', event.get('old_value'))
    print('Current:', event.get('new_value'))
    return {}

iii.register_function({'id': 'state::onUserUpdated'}, on_user_updated)
iii.register_trigger({'type': 'state', 'function_id': 'state::onUserUpdated', 'config': {'scope': 'users', 'key': 'profile'}})


# -- Sample: conditional trigger, only when the email changed ----------------------

def send_verification_email(address):
    # A stand-in for a real mail call: record the send in state, so a client can see it.
    iii.trigger({
        'function_id': 'state::update',
        'payload': {'scope': 'outbox', 'key': address, 'ops': [{'increment': {'field': 'sent', 'by': 1}}]},
    })
    print('Verification email sent to', address)


def email_changed(event):
    if event.get('event_type') != 'state:updated':
        return False
    old = event.get('old_value', {})
    new = event.get('new_value', {})
    return old.get('email') != new.get('email')

iii.register_function({'id': 'conditions::emailChanged'}, email_changed)

def on_email_change(event):
    send_verification_email(event['new_value']['email'])
    return {}

iii.register_function({'id': 'state::onEmailChange'}, on_email_change)

iii.register_trigger({
    'type': 'state',
    'function_id': 'state::onEmailChange',
    'config': {
        'scope': 'users',
        'key': 'profile',
        'condition_function_id': 'conditions::emailChanged',
    },
})


# -- A handler that reads and writes state while it handles a change ---------------

def audit_user_change(event):
    """Count every change to any key of the users scope, in the audit scope."""
    iii.trigger({
        'function_id': 'state::update',
        'payload': {
            'scope': 'audit',
            'key': event['key'],
            'ops': [{'increment': {'field': 'changes', 'by': 1}}, {'merge': {'last': event['event_type']}}],
        },
    })
    return {'audited': event['event_id']}

iii.register_function({'id': 'users::audit'}, audit_user_change)
iii.register_trigger({'type': 'state', 'function_id': 'users::audit', 'config': {'scope': 'users'}})


# -- The conditional trigger again, with a declarative filter: no condition task ------------
# The worker that applied the change judges `when` before it sends anything: a change that
# does not pass costs no message, no task and no result (the condition above costs two
# tasks and three messages for every change, true or false).

def on_email_change_filtered(event):
    iii.trigger({
        'function_id': 'state::update',
        'payload': {
            'scope': 'outbox-filtered',
            'key': event['new_value']['email'],
            'ops': [{'increment': {'field': 'sent', 'by': 1}}],
        },
    })
    return {}

iii.register_function({'id': 'state::onEmailChangeFiltered'}, on_email_change_filtered)

iii.register_trigger({
    'type': 'state',
    'function_id': 'state::onEmailChangeFiltered',
    'config': {
        'scope': 'users',
        'key': 'profile',
        'when': {'all': [{'event_types': ['state:updated']}, {'changed': ['email']}]},
    },
})
