// The Log Analytics workspace and the two custom tables the sync writes (ServiceDesk_CL, ServiceDeskLog_CL).
// Deployed into the workspace's own resource group, because an existing workspace (the one ITSMC used, whose
// queries and workbooks should keep working) often lives outside the connector's group.
//
// A workspace where ITSMC's Data Collector API made ServiceDesk_CL is a classic custom table: Logs Ingestion
// needs it converted first (`az monitor log-analytics workspace table migrate`), which keeps its data.

@description('Create the workspace (true) or use an existing one of this name in this resource group (false).')
param create bool

param name string

@description('Used only when the workspace is created.')
param location string

param tags object

@description('The schema/*.json documents: { table, stream, columns: [{ name, type }] }.')
param tables array

resource newWorkspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = if (create) {
  name: name
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    // 30 days stay within the retention every Analytics table includes at no charge.
    retentionInDays: 30
    features: {
      enableLogAccessUsingOnlyResourcePermissions: true
    }
  }
}

// The one symbol the tables hang from, whether the workspace is new or not.
resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: name
}

// The schema files spell the type `datetime`, as data collection rules do; the tables API documents `dateTime`
// but takes the type case-insensitively (Microsoft's own table examples write `datetime`).
resource customTables 'Microsoft.OperationalInsights/workspaces/tables@2023-09-01' = [for t in tables: {
  parent: workspace
  name: t.table
  properties: {
    plan: 'Analytics'
    schema: {
      name: t.table
      columns: t.columns
    }
  }
  dependsOn: [
    newWorkspace
  ]
}]

output id string = workspace.id
output name string = workspace.name
// The data collection rule goes where the workspace is: its ingestion endpoint is regional.
output location string = create ? location : workspace.location
